"""Infinite ensembles trained on MSE: `gradient_descent_mse_ensemble`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._factor import (
    AbstractFactorization,
    Solver,
    check_solver,
    decay,
    factorize,
    integrated_decay,
    require_eigh,
)
from ._gp import posterior_covariance, posterior_mean
from ._mse import test_kernel_side
from ._utils import (
    Axes,
    Gaussian,
    OutputLayout,
    Times,
    as_kernel,
    as_times,
    check_symmetric,
    check_train_kernel_shape,
    from_2d_to_zipped,
    kernel_defects,
    package,
    parse_get,
    zipped_to_2d,
)

_WHERE = "gradient_descent_mse_ensemble"


def evaluate_kernels(kernel_fn, x1, x2, names: tuple, kwargs: dict) -> dict:
    """Calls `kernel_fn(x1, x2, get, **kwargs)` and returns `{name: array}`."""
    if len(names) == 1:
        out = kernel_fn(x1, x2, names[0], **kwargs)
        if not isinstance(out, (jax.Array, np.ndarray)):
            out = getattr(out, names[0])
        return {names[0]: jnp.asarray(out)}
    out = kernel_fn(x1, x2, tuple(names), **kwargs)
    return {name: jnp.asarray(getattr(out, name)) for name in names}


def dependencies(names: tuple, compute_cov: bool) -> tuple:
    deps = ()
    if "nngp" in names or ("ntk" in names and compute_cov):
        deps += ("nngp",)
    if "ntk" in names:
        deps += ("ntk",)
    return deps


class MSEEnsemblePredictor(eqx.Module):
    """Mean and covariance of an infinite ensemble trained by gradient flow on MSE.

    Returned by `gradient_descent_mse_ensemble`; call it as
    `predictor(t, x_test, get, compute_cov)` (NT's `predict_fn`).

    **Fields:**

    - `kernel_fn`: `kernel_fn(x1, x2, get, **kwargs)`, e.g. `model.kernel`.
      When it is an Equinox module (a bound method of one), its
      hyperparameters are leaves of this pytree and can be differentiated.
    - `x_train`, `y_train`: the training set.
    - `learning_rate`: $\\eta$.
    - `factorizations`: `{"nngp": ..., "ntk": ...}` of the regularized
      train-train kernels asked for at construction.
    - `nngp_train_train`: the 2-D NNGP train-train kernel (for covariances).
    - `kernel_kwargs`: keyword arguments passed to every `kernel_fn` call.
    - `layout`: the output layout (`trace_axes`).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> predictor = et.predict.gradient_descent_mse_ensemble(
    ...     model.kernel, x_train, y_train, get="nngp", diag_reg=1e-4
    ... )
    >>> type(predictor).__name__, sorted(predictor.factorizations)
    ('MSEEnsemblePredictor', ['nngp'])
    >>> ts = jnp.array([1.0, 10.0, 100.0])
    >>> predictor(ts, x_test, "nngp", compute_cov=True).covariance.shape  # (t, M, M)
    (3, 2, 2)
    ```
    """

    kernel_fn: Callable
    x_train: Any
    y_train: Float[Array, "..."]
    learning_rate: Float[Array, ""]
    factorizations: dict[str, AbstractFactorization]
    nngp_train_train: Float[Array, "p p"] | None
    kernel_kwargs: dict[str, Any]
    layout: OutputLayout = eqx.field(static=True)

    def __call__(
        self,
        t: Times = None,
        x_test: Any = None,
        get: Any = None,
        compute_cov: bool = False,
        **kernel_fn_test_test_kwargs: Any,
    ):
        r"""Mean [and covariance] of the ensemble's outputs at time[s] `t`.

        With $A = \Theta + \lambda I = V\operatorname{diag}(a)V^\top$ (for
        `"nngp"` the NNGP $\mathcal{K}$ plays the role of $\Theta$),
        $h_t(a) = (1 - e^{-a \eta t / n}) / a$ and $\mathcal{K}$ the NNGP:

        $$\mu_t = \Theta_{*} V h_t(a) V^\top y, \qquad
          \Sigma_t = \mathcal{K}_{**} + \Theta_{*} V h_t V^\top \mathcal{K}
          V h_t V^\top \Theta_{*}^\top - (\Theta_{*} V h_t V^\top
          \mathcal{K}_{*}^\top + \text{transpose}),$$

        and for `"nngp"` $\Sigma_t = \mathcal{K}_{**} - \mathcal{K}_{*} V
        h_{2t} V^\top \mathcal{K}_{*}^\top$.

        **Arguments:**

        - `t`: a scalar, an array of any shape, or `None` for $t = \infty$
          (by the factorization's linear solve).
        - `x_test`: test inputs; `None` predicts on the training inputs
          (unregularized at `t=None`; pass `x_test=x_train` for regularized
          ones).
        - `get`: `"nngp"`, `"ntk"`, a tuple, or `None` for both; each entry
          must have been factorized at construction.
        - `compute_cov`: also return covariances.
        - `**kernel_fn_test_test_kwargs`: keyword arguments for the test-train
          and test-test `kernel_fn` calls; they override those given at
          construction.

        **Returns:**

        Per entry of `get`, a `Gaussian(mean, covariance)` or the mean, with the
        leading shape of `t`; one value for a string `get`, else a `Gaussians`
        named tuple.
        """
        names, single = parse_get(get, ("nngp", "ntk"), _WHERE)
        for g in names:
            if g not in self.factorizations:
                raise ValueError(
                    f"{_WHERE}: this predictor was built without {g!r}; construct "
                    f"it with `get` including {g!r}."
                )
        layout, y = self.layout, self.y_train
        dtype = y.dtype
        train_side = layout.side_shape(y.shape)

        if x_test is None:
            k_td, nngp_tt, side = None, None, train_side
        else:
            kwargs = {**self.kernel_kwargs, **kernel_fn_test_test_kwargs}
            raw = evaluate_kernels(
                self.kernel_fn,
                x_test,
                self.x_train,
                dependencies(names, compute_cov),
                kwargs,
            )
            k_td, side = {}, None
            for name, k in raw.items():
                side = test_kernel_side(layout, k, train_side, _WHERE)
                k_td[name] = k.astype(dtype)
            nngp_tt = None
            if compute_cov:
                tt = evaluate_kernels(self.kernel_fn, x_test, None, ("nngp",), kwargs)
                nngp_tt = tt["nngp"].astype(dtype)
                sides = layout.kernel_side_shapes(
                    nngp_tt.shape, "kernel_fn(x_test)", _WHERE
                )
                if sides != (side, side):
                    raise ValueError(
                        f"{_WHERE}: `kernel_fn(x_test, None)` has shape "
                        f"{nngp_tt.shape}, which does not match the test set {side}."
                    )
        if t is not None:
            for g in names:
                require_eigh(self.factorizations[g], _WHERE)
            t = as_times(t, dtype, _WHERE)
        out = _predict(
            self.factorizations,
            self.nngp_train_train,
            y,
            self.learning_rate,
            layout,
            names,
            t,
            k_td,
            nngp_tt,
            side,
            compute_cov,
        )
        return package(out, names, single)


@eqx.filter_jit
def _predict(
    factorizations,
    nngp_dd,
    y,
    learning_rate,
    layout,
    names,
    t,
    k_td,
    nngp_tt,
    side,
    cov,
):
    if k_td is not None:
        k_td = {name: zipped_to_2d(k) for name, k in k_td.items()}
    if nngp_tt is not None:
        nngp_tt = zipped_to_2d(nngp_tt)
    if t is None:
        return _at_infinity(
            factorizations, nngp_dd, y, layout, names, k_td, nngp_tt, side, cov
        )
    tau = t.reshape(-1) * learning_rate
    out = _at_times(
        factorizations, nngp_dd, y, layout, names, tau, k_td, nngp_tt, side, cov
    )
    n_t = t.ndim

    def restore(x):  # (T, ...) -> (*t.shape, ...)
        return x.reshape(t.shape + x.shape[1:])

    for g, value in out.items():
        if cov:
            mean, covariance = value
            mean = layout.outputs_from_2d(restore(mean), side, n_t)
            out[g] = Gaussian(
                mean, from_2d_to_zipped(restore(covariance), side, side, n_t)
            )
        else:
            out[g] = layout.outputs_from_2d(restore(value), side, n_t)
    return out


def _at_infinity(factorizations, nngp_dd, y, layout, names, k_td, nngp_tt, side, cov):
    y2 = layout.outputs_to_2d(y)
    out = {}
    for g in names:
        if k_td is None:
            mean = y
            covariance = jnp.zeros(tuple(d for s in side for d in (s, s)), y.dtype)
        else:
            fac = factorizations[g]
            mean = layout.outputs_from_2d(posterior_mean(fac, k_td[g], y2), side)
            if cov:
                covariance = posterior_covariance(
                    g, fac, k_td[g], k_td["nngp"], nngp_tt, nngp_dd
                )
                covariance = from_2d_to_zipped(covariance, side, side)
        out[g] = Gaussian(mean, covariance) if cov else mean
    return out


def _at_times(factorizations, nngp_dd, y, layout, names, tau, k_td, nngp_tt, side, cov):
    """Means `(T, M, C)` and covariances `(T, M, M)`, all 2-D."""
    n = y.size
    y2 = layout.outputs_to_2d(y)
    any_inf = jnp.any(jnp.isinf(tau))
    out = {}
    for g in names:
        eig = factorizations[g]
        lam = eig.regularized_eigenvalues
        v = eig.check_invertible(eig.eigenvectors, any_inf)
        coef = v.T @ y2
        if k_td is None:
            mean = jnp.einsum("pi,ti,ic->tpc", v, -decay(lam, tau, n), coef)
        else:
            proj = k_td[g] @ v
            h = -integrated_decay(lam, tau, n)
            mean = jnp.einsum("mi,ti,ic->tmc", proj, h, coef)
        if not cov:
            out[g] = mean
            continue
        if k_td is None and g == "nngp":
            w = jnp.maximum(lam, 0) * (1 + decay(lam, 2 * tau, n))
            covariance = jnp.einsum("pi,ti,qi->tpq", v, w, v)
        elif k_td is None:
            w = 1 + decay(lam, tau, n)
            c = v.T @ nngp_dd @ v
            covariance = jnp.einsum("pi,ti,ij,tj,qj->tpq", v, w, c, w, v)
        elif g == "nngp":
            h2 = -integrated_decay(lam, 2 * tau, n)
            covariance = nngp_tt - jnp.einsum("mi,ti,li->tml", proj, h2, proj)
        else:
            d = proj[None] * h[:, None, :]
            e = k_td["nngp"] @ v
            c = v.T @ nngp_dd @ v
            cross = jnp.einsum("tmi,li->tml", d, e)
            covariance = (
                nngp_tt
                + jnp.einsum("tmi,ij,tlj->tml", d, c, d)
                - cross
                - jnp.swapaxes(cross, 1, 2)
            )
        out[g] = (mean, covariance)
    return out


@eqx.filter_jit
def _build(kernels, y, diag_reg, absolute, solver, names):
    factorizations, asymmetric, nngp_dd = {}, {}, None
    for name, k in kernels.items():
        k2, asymmetric[name] = kernel_defects(zipped_to_2d(k))
        if name == "nngp":
            nngp_dd = k2
        if name in names:
            factorizations[name] = factorize(k2, diag_reg, absolute, solver)
    return factorizations, nngp_dd, asymmetric


def gradient_descent_mse_ensemble(
    kernel_fn: Callable,
    x_train: Any,
    y_train: Real[ArrayLike, "n *rest"],
    learning_rate: ScalarLike = 1.0,
    diag_reg: ScalarLike = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    get: Any = None,
    solver: Solver = "eigh",
    **kernel_fn_train_train_kwargs: Any,
) -> MSEEnsemblePredictor:
    r"""An infinite ensemble of infinitely wide networks trained on MSE (NT's
    `gradient_descent_mse_ensemble`).

    Marginalizes the random initialization: the outputs at time $t$ are
    Gaussian, with the mean and covariance of `MSEEnsemblePredictor.__call__`.
    The train-train kernels are computed and factorized here, once.

    **Arguments:**

    - `kernel_fn`: `kernel_fn(x1, x2, get, **kwargs)` returning one array for a
      string `get` and an object with `.nngp`/`.ntk` for a tuple, e.g.
      `model.kernel` of an eqtangents network.
    - `x_train`, `y_train`: the training set.
    - `learning_rate`, `diag_reg`, `diag_reg_absolute_scale`, `trace_axes`: as
      in `gradient_descent_mse`.
    - `get`: which regimes to prepare, `"nngp"`, `"ntk"` or `None` for both
      (NT computes them lazily; here they are factorized up front). The NNGP
      train-train kernel is always computed, since NTK covariances use it.
    - `solver`: `"eigh"` (default, serves every `t`), `"cholesky"`, `"cg"` or
      a `lineax` solver (`t=None` only).
    - `**kernel_fn_train_train_kwargs`: passed to every `kernel_fn` call.

    **Returns:**

    An `MSEEnsemblePredictor`.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ensemble = et.predict.gradient_descent_mse_ensemble
    >>> predictor = ensemble(model.kernel, x_train, y_train)
    >>> mean, cov = predictor(None, x_test, "ntk", compute_cov=True)      # t = inf
    >>> mean.shape, cov.shape
    ((2, 1), (2, 2))
    >>> prior = predictor(0.0, x_test, "nngp", compute_cov=True)  # before training
    >>> bool(jnp.allclose(prior.mean, 0.0)), bool(jnp.allclose(prior.covariance,
    ...                                             model.kernel(x_test, None, "nngp")))
    (True, True)
    ```
    """
    y = jnp.asarray(y_train)
    layout = OutputLayout.create(y.shape, trace_axes, _WHERE)
    names, _ = parse_get(get, ("nngp", "ntk"), _WHERE)
    needed = dependencies(names, compute_cov=True)
    kernels = evaluate_kernels(
        kernel_fn, x_train, None, needed, kernel_fn_train_train_kwargs
    )
    kernels = {name: as_kernel(k) for name, k in kernels.items()}
    dtype = kernels["nngp"].dtype
    for name, k in kernels.items():
        label = f"kernel_fn(x_train, None, {name!r})"
        check_train_kernel_shape(layout, k, y.shape, label, _WHERE)
        kernels[name] = k.astype(dtype)
    factorizations, nngp_dd, asymmetric = _build(
        kernels,
        y.astype(dtype),
        jnp.asarray(diag_reg, dtype),
        bool(diag_reg_absolute_scale),
        check_solver(solver, dtype, _WHERE),
        names,
    )
    predictor = MSEEnsemblePredictor(
        kernel_fn,
        x_train,
        y.astype(dtype),
        jnp.asarray(learning_rate, dtype),
        factorizations,
        nngp_dd,
        dict(kernel_fn_train_train_kwargs),
        layout,
    )
    for name, flag in asymmetric.items():
        label = f"kernel_fn(x_train, None, {name!r})"
        predictor = check_symmetric(predictor, flag, label, _WHERE)
    return predictor
