r"""Factorizations of the regularized train-train kernel $K + \lambda I$.

They are ordinary pytrees: compute one once, then predict from it at any number
of times and test sets (or store it, `vmap` over it, differentiate through it).
"""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy as jsp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, ScalarLike

from ._utils import eps

Solver = Literal["eigh", "cholesky", "cg"] | lx.AbstractLinearSolver


_SINGULAR_RTOL = 10.0
_SINGULAR = (
    "et.predict: k_train_train + diag_reg * I is singular (or not positive "
    "definite), so predictions at t = infinity are undefined. Pass "
    "`diag_reg > 0`: the kernel is usable once diag_reg > 10 eps "
    "lambda_max / mean(diag K), which diag_reg = 10 eps N always satisfies "
    "(N the size of the kernel; eps = 1.2e-7 in float32, 2.2e-16 in float64); "
    "1e-6 in float64 and 1e-4 in float32 are common choices."
)


class AbstractFactorization(eqx.Module):
    r"""A factorized regularized kernel $A = K + \lambda I$ (`shift` is $\lambda$).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> for solver in ("eigh", "cholesky", "cg"):
    ...     mse = et.predict.gradient_descent_mse
    ...     p = mse(ntk_train, y_train, diag_reg=1e-3, solver=solver)
    ...     f = p.factorization
    ...     a = ntk_train + f.shift * jnp.eye(6)             # A = K + lambda I
    ...     print(type(f).__name__, isinstance(f, et.predict.AbstractFactorization),
    ...           bool(jnp.allclose(f.solve(y_train), jnp.linalg.solve(a, y_train))))
    EighFactorization True True
    CholeskyFactorization True True
    IterativeFactorization True True
    ```
    """

    @abc.abstractmethod
    def solve(self, b: Float[Array, "p k"]) -> Float[Array, "p k"]:
        r"""$A^{-1} b$; raises (through `eqx.error_if`) when $A$ is singular."""

    def quadratic_form(self, b: Float[Array, "p k"]) -> Float[Array, "k k"]:
        r"""$b^\top A^{-1} b$."""
        return b.T @ self.solve(b)


class EighFactorization(AbstractFactorization):
    r"""Eigendecomposition $K = V \operatorname{diag}(e) V^\top$ of the kernel.

    The regularizer is kept apart, $A = V \operatorname{diag}(e + \lambda) V^\top$,
    so gradients with respect to `diag_reg` never pass through `eigh`.

    **Fields:**

    - `eigenvalues`: $e$, ascending, of the unregularized kernel.
    - `eigenvectors`: $V$, columns orthonormal.
    - `shift`: the absolute diagonal regularizer $\lambda$.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> f = et.predict.gradient_descent_mse(ntk_train, y_train).factorization
    >>> e, v = f.eigenvalues, f.eigenvectors
    >>> bool(jnp.allclose(v @ jnp.diag(e) @ v.T, ntk_train))
    True
    >>> bool(jnp.all(e[:-1] <= e[1:]))                         # ascending
    True
    ```
    """

    eigenvalues: Float[Array, " p"]
    eigenvectors: Float[Array, "p p"]
    shift: Float[Array, ""]

    @property
    def regularized_eigenvalues(self) -> Float[Array, " p"]:
        return self.eigenvalues + self.shift

    def singular(self) -> Array:
        r"""Whether $A$ is numerically singular: $a_{\min} \le 10\,\epsilon\, a_{\max}$.

        (Rounding puts the zero eigenvalues of a singular kernel within a few
        $\epsilon\, a_{\max}$ of 0.)
        """
        lam = self.regularized_eigenvalues
        top = jnp.max(jnp.abs(lam))
        return lam[0] <= _SINGULAR_RTOL * eps(lam.dtype) * top

    def check_invertible(self, x: Array, when: Array | bool = True) -> Array:
        return eqx.error_if(x, jnp.logical_and(when, self.singular()), _SINGULAR)

    def solve(self, b: Float[Array, "p k"]) -> Float[Array, "p k"]:
        v = self.eigenvectors
        lam = self.regularized_eigenvalues
        v = self.check_invertible(v)
        return v @ ((v.T @ b) / lam[:, None])

    def quadratic_form(self, b: Float[Array, "p k"]) -> Float[Array, "k k"]:
        r"""$c^\top \operatorname{diag}(a)^{-1} c$ with $c = V^\top b$: one product
        with $V$ instead of the two of `solve`."""
        c = self.check_invertible(self.eigenvectors).T @ b
        return c.T @ (c / self.regularized_eigenvalues[:, None])


class CholeskyFactorization(AbstractFactorization):
    r"""Lower Cholesky factor $L L^\top = K + \lambda I$ (serves $t = \infty$ only).

    **Fields:**

    - `lower`: $L$.
    - `shift`: the absolute diagonal regularizer $\lambda$ included in $L$.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> f = et.predict.gradient_descent_mse(ntk_train, y_train, diag_reg=1e-4,
    ...                                     solver="cholesky").factorization
    >>> bool(jnp.allclose(f.lower @ f.lower.T, ntk_train + f.shift * jnp.eye(6)))
    True
    ```
    """

    lower: Float[Array, "p p"]
    shift: Float[Array, ""]

    def solve(self, b: Float[Array, "p k"]) -> Float[Array, "p k"]:
        return jsp.linalg.cho_solve((self.lower, True), b)

    def quadratic_form(self, b: Float[Array, "p k"]) -> Float[Array, "k k"]:
        r"""$w^\top w$ with $w = L^{-1} b$: one triangular solve instead of two."""
        w = jsp.linalg.solve_triangular(self.lower, b, lower=True)
        return w.T @ w


class IterativeFactorization(AbstractFactorization):
    r"""No factorization: $A^{-1} b$ by an iterative `lineax` solver (default CG).

    Memory stays at one copy of $K$ and the cost per solve is a few hundred
    matrix-vector products, which pays off for large $N$ and well-regularized
    kernels. Serves $t = \infty$ only.

    **Fields:**

    - `matrix`: the unregularized kernel $K$.
    - `shift`: $\lambda$.
    - `solver`: a `lineax` solver for symmetric positive definite operators.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> mse = et.predict.gradient_descent_mse
    >>> p = mse(ntk_train, y_train, diag_reg=1e-3, solver="cg")
    >>> type(p.factorization).__name__
    'IterativeFactorization'
    >>> exact = et.predict.gradient_descent_mse(ntk_train, y_train, diag_reg=1e-3)
    >>> bool(jnp.allclose(p(None, None, 0.0, ntk_test_train),
    ...                   exact(None, None, 0.0, ntk_test_train), atol=1e-5))
    True
    ```
    """

    matrix: Float[Array, "p p"]
    shift: Float[Array, ""]
    solver: lx.AbstractLinearSolver

    def solve(self, b: Float[Array, "p k"]) -> Float[Array, "p k"]:
        k, shift = self.matrix, self.shift
        structure = jax.ShapeDtypeStruct((k.shape[0],), k.dtype)
        operator = lx.FunctionLinearOperator(
            lambda v: k @ v + shift * v, structure, lx.positive_semidefinite_tag
        )

        def one(column):
            sol = lx.linear_solve(operator, column, self.solver, throw=False)
            return sol.value, sol.result != lx.RESULTS.successful

        x, failed = jax.vmap(one, in_axes=1, out_axes=(1, 0))(b)
        return eqx.error_if(
            x,
            jnp.any(failed),
            "et.predict: the iterative solve of (k_train_train + diag_reg * I) x = b "
            "did not converge; the matrix may be singular or badly conditioned. "
            "Increase `diag_reg`, loosen the solver's tolerances or raise its "
            "`max_steps`.",
        )


def decay(lam: Float[Array, " p"], t: Float[Array, " t"], n: int) -> Array:
    r"""$e^{-\lambda_+ t / n} - 1$ for each time (rows) and eigenvalue (columns).

    Negative eigenvalues (rounding errors of a PSD kernel) are clipped to 0;
    a zero eigenvalue never moves, also at $t = \infty$.
    """
    lam = jnp.maximum(lam, 0)[None, :]
    t = t[:, None]
    moving = lam > 0
    return jnp.where(moving, jnp.expm1(-jnp.where(moving, lam, 1) * t / n), 0)


def integrated_decay(lam: Float[Array, " p"], t: Float[Array, " t"], n: int) -> Array:
    r"""$(e^{-\lambda_+ t / n} - 1) / \lambda_+$; $-t/n$ where $\lambda_+ = 0$."""
    lam_pos = jnp.maximum(lam, 0)[None, :]
    moving = lam_pos > 0
    safe = jnp.where(moving, lam_pos, 1)
    return jnp.where(moving, decay(lam, t, n) / safe, -t[:, None] / n)


def regularizer(
    k2: Float[Array, "p p"], diag_reg: ScalarLike, absolute: bool
) -> Float[Array, ""]:
    r"""$\lambda$ = `diag_reg`, times $\operatorname{tr}(K)/P$ unless `absolute`."""
    diag_reg = jnp.asarray(diag_reg, k2.dtype)
    if absolute:
        return diag_reg
    return diag_reg * jnp.trace(k2) / k2.shape[0]


def default_cg(dtype) -> lx.CG:
    tol = 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5
    return lx.CG(rtol=tol, atol=tol)


def check_solver(solver: Solver, dtype, where: str) -> Solver:
    """Validates `solver`; `"cg"` becomes a `lineax.CG` with tolerances for `dtype`."""
    if isinstance(solver, str) and solver == "cg":
        return default_cg(dtype)
    if isinstance(solver, lx.AbstractLinearSolver) or solver in ("eigh", "cholesky"):
        return solver
    raise ValueError(
        f"{where}: unknown `solver={solver!r}`; choose 'eigh', 'cholesky', 'cg' "
        "or pass a `lineax` solver such as `lineax.CG(rtol, atol)`."
    )


def factorize(
    k2: Float[Array, "p p"],
    diag_reg: Float[Array, ""],
    diag_reg_absolute_scale: bool,
    solver: Solver,
) -> AbstractFactorization:
    """Factorizes a 2-D kernel by a solver that passed `check_solver`."""
    shift = regularizer(k2, diag_reg, diag_reg_absolute_scale)
    if isinstance(solver, lx.AbstractLinearSolver):
        return IterativeFactorization(k2, shift, solver)
    if solver == "eigh":
        return _eigh(k2, shift)
    return _cholesky(k2, shift)


def _eigh(k2: Float[Array, "p p"], shift: Float[Array, ""]) -> EighFactorization:
    evals, evecs = jnp.linalg.eigh(k2)
    top = jnp.max(jnp.abs(evals))
    evals = eqx.error_if(
        evals,
        evals[0] + shift < -np.sqrt(eps(k2.dtype)) * top,
        "et.predict: k_train_train + diag_reg * I is not positive semi-definite "
        "(its smallest eigenvalue is below -sqrt(eps) times the largest). "
        "Check how the kernel was computed.",
    )
    return EighFactorization(evals, evecs, shift)


def _cholesky(
    k2: Float[Array, "p p"], shift: Float[Array, ""]
) -> CholeskyFactorization:
    p = k2.shape[0]
    a = k2 + shift * jnp.eye(p, dtype=k2.dtype)
    lower = jnp.linalg.cholesky(a)
    pivots = jnp.diagonal(lower)
    bad = ~jnp.all(jnp.isfinite(lower)) | (
        jnp.min(pivots) ** 2
        <= _SINGULAR_RTOL * eps(k2.dtype) * jnp.max(jnp.diagonal(a))
    )
    lower = eqx.error_if(lower, bad, _SINGULAR)
    return CholeskyFactorization(lower, shift)


def require_eigh(factorization: AbstractFactorization, where: str) -> EighFactorization:
    if not isinstance(factorization, EighFactorization):
        raise ValueError(
            f"{where}: predictions at finite `t` need the eigendecomposition, but "
            f"this predictor holds a {type(factorization).__name__} (which serves "
            "t=None only). Construct it with `solver='eigh'`."
        )
    return factorization
