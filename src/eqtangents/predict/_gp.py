"""Exact posteriors at infinite time: `gp_inference` (NNGP, NTK and NTKGP)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._factor import AbstractFactorization, Solver, check_solver, factorize
from ._mse import test_kernel_side
from ._utils import (
    Axes,
    Gaussian,
    OutputLayout,
    as_kernel,
    check_symmetric,
    check_train_kernel_shape,
    from_2d_to_zipped,
    kernel_attr,
    kernel_defects,
    package,
    parse_get,
    zipped_to_2d,
)

_WHERE = "gp_inference"


def posterior_mean(
    factorization: AbstractFactorization,
    k_td: Float[Array, "m p"],
    y2: Float[Array, "p c"],
) -> Float[Array, "m c"]:
    r"""$K_{*} A^{-1} y$."""
    return k_td @ factorization.solve(y2)


def posterior_covariance(
    g: str,
    factorization: AbstractFactorization,
    k_td: Float[Array, "m p"],
    k_td_init: Float[Array, "m p"],
    k_tt_init: Float[Array, "m m"],
    nngp_dd: Float[Array, "p p"] | None,
) -> Float[Array, "m m"]:
    r"""Posterior covariance on a test set, all kernels 2-D.

    For `"nngp"` ($K$ = NNGP) and `"ntkgp"` ($K$ = NTK) it is the GP posterior
    $K_{**} - K_{*} A^{-1} K_{*}^\top$. For `"ntk"` (an infinite ensemble trained
    to convergence, $A = \Theta + \lambda I$, $\mathcal{K}$ the NNGP):

    $$\mathcal{K}_{**} + \Theta_{*} A^{-1} \mathcal{K} A^{-1} \Theta_{*}^\top
      - \Theta_{*} A^{-1} \mathcal{K}_{*}^\top - \mathcal{K}_{*} A^{-1}
      \Theta_{*}^\top.$$
    """
    if g in ("nngp", "ntkgp"):  # here k_td and k_td_init are one kernel
        return k_tt_init - factorization.quadratic_form(k_td_init.T)
    term = factorization.solve(k_td.T)  # A^{-1} Theta_*^T, (p, m)
    cross = term.T @ k_td_init.T
    return k_tt_init + term.T @ (nngp_dd @ term) - cross - cross.T


class GPInference(eqx.Module):
    r"""Posteriors of NNGP, NTK and NTKGP from factorized train-train kernels.

    Returned by `gp_inference`; call it as
    `predictor(get, k_test_train, k_test_test)` (NT's `predict_fn`). With
    $A = K_{tt} + \lambda I$ the Gaussian posterior is

    $$\mu_* = K_{*t} A^{-1} y, \qquad \Sigma_* = K_{**} - K_{*t} A^{-1} K_{t*},$$

    with $K$ the NNGP or the NTK (`get`).

    **Fields:**

    - `factorizations`: `{"nngp": ..., "ntk": ...}` (one factorization under
      both names when `k_train_train` was a single array).
    - `nngp_train_train`: the 2-D NNGP train-train kernel, needed for the NTK
      posterior covariance (`None` when not given).
    - `y_train`: the targets.
    - `train_kernel_shape`: shape of the train-train kernel(s).
    - `layout`: the output layout (`trace_axes`).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> k_train = model.kernel(x_train, None, ("nngp", "ntk"))
    >>> gp = et.predict.gp_inference(k_train, y_train, diag_reg=1e-6)
    >>> type(gp).__name__, sorted(gp.factorizations)
    ('GPInference', ['nngp', 'ntk'])
    >>> nngp, ntk = gp(("nngp", "ntk"), k_train)              # on the training set
    >>> bool(jnp.allclose(ntk, y_train, atol=1e-3))   # means only, without k_test_test
    True
    ```
    """

    factorizations: dict[str, AbstractFactorization]
    nngp_train_train: Float[Array, "p p"] | None
    y_train: Float[Array, "..."]
    train_kernel_shape: tuple[int, ...] = eqx.field(static=True)
    layout: OutputLayout = eqx.field(static=True)

    def _factorization(self, name: str) -> AbstractFactorization:
        if name not in self.factorizations:
            raise ValueError(
                f"{_WHERE}: `k_train_train` holds no {name!r} kernel; pass an object "
                f"with `.{name}` (an `et.Kernel` or a named tuple) to use it."
            )
        return self.factorizations[name]

    def __call__(
        self,
        get: Any = None,
        k_test_train: Any = None,
        k_test_test: Any = None,
    ):
        r"""The posterior on a test set (or the training set).

        **Arguments:**

        - `get`: `"nngp"`, `"ntk"`, `"ntkgp"`, a tuple of them, or `None` for
          `("nngp", "ntk")`.
        - `k_test_train`: test-train kernel(s): an array (used for every entry
          of `get`), an `et.Kernel`, or a named tuple with `nngp`/`ntk`. `None`
          predicts on the training set: the mean is `y_train` and the
          covariance zero.
        - `k_test_test`: test-test kernel(s), to get covariances; `None` for
          means only. With `k_test_train=None` any non-None value (e.g. `True`)
          asks for the (zero) training-set covariance.

        **Returns:**

        For each entry of `get`, a `Gaussian(mean, covariance)` when
        `k_test_test` is given, else the mean; one value for a string `get`, a
        `Gaussians` named tuple for a tuple. The NTK covariance needs both NNGP
        and NTK kernels in every argument.
        """
        names, single = parse_get(get, ("nngp", "ntk", "ntkgp"), _WHERE)
        layout, y = self.layout, self.y_train
        train_side = layout.side_shape(y.shape)
        for g in names:
            self._factorization("ntk" if g == "ntkgp" else g)
        if k_test_train is None:
            out = {}
            for g in names:
                zeros = jnp.zeros(self.train_kernel_shape, y.dtype)
                out[g] = y if k_test_test is None else Gaussian(y, zeros)
            return package(out, names, single)

        td_names = {"ntk" if g == "ntkgp" else g for g in names}
        tt_names = set()
        if k_test_test is not None:
            if "ntk" in names and self.nngp_train_train is None:
                raise ValueError(
                    f"{_WHERE}: the NTK posterior covariance needs the NNGP kernels "
                    "as well: pass `k_train_train`, `k_test_train` and `k_test_test` "
                    "with both `nngp` and `ntk` (e.g. `et.Kernel` objects)."
                )
            tt_names = {"ntk" if g == "ntkgp" else "nngp" for g in names}
            td_names |= tt_names
        k_td, test_side = {}, None
        for name in sorted(td_names):
            k = kernel_attr(k_test_train, name, "k_test_train")
            test_side = test_kernel_side(layout, k, train_side, _WHERE)
            k_td[name] = k.astype(y.dtype)
        k_tt = {}
        for name in sorted(tt_names):
            k = kernel_attr(k_test_test, name, "k_test_test")
            sides = layout.kernel_side_shapes(k.shape, "k_test_test", _WHERE)
            if sides != (test_side, test_side):
                raise ValueError(
                    f"{_WHERE}: `k_test_test` has shape {k.shape}, which does not "
                    f"match the test set {test_side} of `k_test_train`."
                )
            k_tt[name] = k.astype(y.dtype)
        out = _posterior(self, names, k_td, k_tt or None, test_side)
        return package(out, names, single)


@eqx.filter_jit
def _posterior(
    predictor: GPInference,
    names: tuple,
    k_td: dict[str, Array],
    k_tt: dict[str, Array] | None,
    test_side: tuple,
) -> dict:
    layout, y = predictor.layout, predictor.y_train
    y2 = layout.outputs_to_2d(y)
    k_td = {name: zipped_to_2d(k) for name, k in k_td.items()}
    out = {}
    for g in names:
        k_name = "ntk" if g == "ntkgp" else g
        fac = predictor.factorizations[k_name]
        mean = posterior_mean(fac, k_td[k_name], y2)
        mean = layout.outputs_from_2d(mean, test_side)
        if k_tt is None:
            out[g] = mean
            continue
        init = "ntk" if g == "ntkgp" else "nngp"
        cov = posterior_covariance(
            g,
            fac,
            k_td[k_name],
            k_td[init],
            zipped_to_2d(k_tt[init]),
            predictor.nngp_train_train,
        )
        out[g] = Gaussian(mean, from_2d_to_zipped(cov, test_side, test_side))
    return out


@eqx.filter_jit
def _build(kernels, y, diag_reg, absolute, solver, layout, alias):
    factorizations, asymmetric, nngp_dd = {}, {}, None
    for name, k in kernels.items():
        k2, asymmetric[name] = kernel_defects(zipped_to_2d(k))
        factorizations[name] = factorize(k2, diag_reg, absolute, solver)
        if name == "nngp" and not alias:
            nngp_dd = k2
    if alias:
        factorizations["ntk"] = factorizations["nngp"]
    shape = next(iter(kernels.values())).shape
    return GPInference(factorizations, nngp_dd, y, shape, layout), asymmetric


def gp_inference(
    k_train_train: Any,
    y_train: Real[ArrayLike, "n *rest"],
    diag_reg: ScalarLike = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solver: Solver = "cholesky",
) -> GPInference:
    r"""Exact posteriors of NNGP, NTK and NTKGP inference (NT's `gp_inference`).

    "nngp" is the Bayesian posterior of the infinitely wide network; "ntk" the
    distribution of an infinite ensemble of infinitely wide networks trained by
    gradient flow on MSE to convergence; "ntkgp" the posterior of a GP whose
    prior covariance is the NTK. Means are $K_{*}(K + \lambda I)^{-1} y$.

    **Arguments:**

    - `k_train_train`: the train-train kernel(s): an array, an `et.Kernel`, or
      a named tuple with `nngp` and/or `ntk`. Every kernel present is
      factorized here.
    - `y_train`: targets.
    - `diag_reg`, `diag_reg_absolute_scale`, `trace_axes`: as in
      `gradient_descent_mse`.
    - `solver`: `"cholesky"` (default), `"eigh"`, `"cg"` or a `lineax` solver.

    **Returns:**

    A `GPInference` pytree holding the factorizations; call it with
    `(get, k_test_train, k_test_test)`.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> k_train = model.kernel(x_train, None, ("nngp", "ntk"))
    >>> gp = et.predict.gp_inference(k_train, y_train, diag_reg=1e-6)
    >>> k_test_train = model.kernel(x_test, x_train, ("nngp", "ntk"))
    >>> k_test = model.kernel(x_test, None, ("nngp", "ntk"))
    >>> mean, cov = gp("nngp", k_test_train, k_test)          # a Gaussian posterior
    >>> mean.shape, cov.shape
    ((2, 1), (2, 2))
    >>> lam = 1e-6 * jnp.trace(k_train.nngp) / 6              # diag_reg, relative
    >>> a = k_train.nngp + lam * jnp.eye(6)
    >>> bool(jnp.allclose(mean, k_test_train.nngp @ jnp.linalg.solve(a, y_train)))
    True
    >>> bool(jnp.allclose(cov, k_test.nngp - k_test_train.nngp
    ...                   @ jnp.linalg.solve(a, k_test_train.nngp.T)))
    True
    ```
    """
    y = jnp.asarray(y_train)
    layout = OutputLayout.create(y.shape, trace_axes, _WHERE)
    alias = isinstance(k_train_train, (jax.Array, np.ndarray))
    if alias:
        kernels = {"nngp": k_train_train}
    else:
        kernels = {
            name: getattr(k_train_train, name)
            for name in ("nngp", "ntk")
            if getattr(k_train_train, name, None) is not None
        }
        if not kernels:
            raise ValueError(
                f"{_WHERE}: `k_train_train` must be an array or hold `nngp` and/or "
                f"`ntk` arrays, got {type(k_train_train).__name__}."
            )
    kernels = {name: as_kernel(k) for name, k in kernels.items()}
    dtype = next(iter(kernels.values())).dtype
    for name, k in kernels.items():
        check_train_kernel_shape(layout, k, y.shape, f"k_train_train.{name}", _WHERE)
        kernels[name] = k.astype(dtype)
    predictor, asymmetric = _build(
        kernels,
        y.astype(dtype),
        jnp.asarray(diag_reg, dtype),
        bool(diag_reg_absolute_scale),
        check_solver(solver, dtype, _WHERE),
        layout,
        alias,
    )
    for name, flag in asymmetric.items():
        label = "k_train_train" if alias else f"k_train_train.{name}"
        predictor = check_symmetric(predictor, flag, label, _WHERE)
    return predictor
