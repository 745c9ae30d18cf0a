"""Closed-form gradient flow on the mean squared error: `gradient_descent_mse`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
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
from ._utils import (
    Axes,
    OutputLayout,
    Times,
    as_kernel,
    as_times,
    check_outputs_shape,
    check_symmetric,
    check_train_kernel_shape,
    kernel_defects,
    zipped_to_2d,
)

_WHERE = "gradient_descent_mse"


def check_predict_inputs(fx_train_0, fx_test_0, k_test_train, where: str) -> None:
    if fx_train_0 is None and fx_test_0 is None:
        raise ValueError(
            f"{where}: both `fx_train_0` and `fx_test_0` are None, so there is "
            "nothing to predict."
        )
    if fx_test_0 is not None and k_test_train is None:
        raise ValueError(
            f"{where}: predictions on the test set need `k_test_train` (the kernel "
            "between test and training inputs)."
        )


def test_kernel_side(layout: OutputLayout, k_test_train: Any, train_side, where: str):
    """Validates the shape of `k_test_train`; returns the test side shape."""
    shape = np.shape(k_test_train)
    test_side, side2 = layout.kernel_side_shapes(shape, "k_test_train", where)
    if side2 != train_side:
        raise ValueError(
            f"{where}: `k_test_train` has shape {shape}; its training axes {side2} "
            f"do not match the training outputs {train_side}. It must be the kernel "
            "between test inputs (first) and training inputs (second)."
        )
    return test_side


def as_outputs(f: Any, shape: tuple, dtype, name: str, where: str) -> Array:
    """Validates that `f` broadcasts to `shape`; returns it as an array of `dtype`."""
    check_outputs_shape(f, shape, name, where)
    return jnp.asarray(f, dtype)


class MSEPredictor(eqx.Module):
    r"""Predictions of gradient flow on the MSE loss, from a factorized kernel.

    Returned by `gradient_descent_mse`; call it as
    `predictor(t, fx_train_0, fx_test_0, k_test_train)` (NT's `predict_fn`).

    **Fields:**

    - `factorization`: the factorized regularized train-train kernel.
    - `y_train`: the targets.
    - `learning_rate`: $\eta$; times are measured in units of $1/\eta$.
    - `layout`: the output layout (`trace_axes`).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> mse = et.predict.gradient_descent_mse
    >>> predictor = mse(ntk_train, y_train, solver="cholesky")
    >>> type(predictor).__name__, type(predictor.factorization).__name__
    ('MSEPredictor', 'CholeskyFactorization')
    >>> f_test = predictor(None, None, 0.0, ntk_test_train)    # t = inf, test set only
    >>> f_test.shape
    (2, 1)
    ```
    """

    factorization: AbstractFactorization
    y_train: Float[Array, "..."]
    learning_rate: Float[Array, ""]
    layout: OutputLayout = eqx.field(static=True)

    def __call__(
        self,
        t: Times = None,
        fx_train_0: None | ScalarLike | Real[ArrayLike, "..."] = 0.0,
        fx_test_0: None | ScalarLike | Real[ArrayLike, "..."] = None,
        k_test_train: Float[ArrayLike, "..."] | None = None,
    ):
        r"""Outputs on the training [and test] set at time[s] `t`.

        With $A = K + \lambda I = V \operatorname{diag}(a) V^\top$,
        $n$ = `y_train.size` and $\tau = \eta t$:

        $$f_{\text{train}}(t) = f_0 + V \operatorname{diag}(e^{-a\tau/n} - 1)
          V^\top (f_0 - y),$$
        $$f_{\text{test}}(t) = g_0 + K_{*} V
          \operatorname{diag}\Big(\frac{e^{-a\tau/n} - 1}{a}\Big) V^\top (f_0 - y).$$

        **Arguments:**

        - `t`: a scalar or an array of any shape (leading axes of the result),
          or `None` for $t = \infty$, computed by a linear solve. `jnp.inf`
          inside an array goes through the eigendecomposition.
        - `fx_train_0`: outputs on the training set at $t = 0$ (broadcast to
          `y_train.shape`); `None` skips training predictions and takes
          $f_0 = 0$.
        - `fx_test_0`: outputs on the test set at $t = 0$; `None` skips test
          predictions.
        - `k_test_train`: kernel between test and training inputs.

        **Returns:**

        `fx_train_t`, `fx_test_t`, or `(fx_train_t, fx_test_t)` when both are
        asked for, each with the leading shape of `t`. At $t = \infty$ (`None`)
        the training outputs are `y_train`, as in NT, whatever `diag_reg`; for
        regularized training-set predictions pass the training set as a test set
        (`k_test_train=k_train_train`).
        """
        check_predict_inputs(fx_train_0, fx_test_0, k_test_train, _WHERE)
        layout, y = self.layout, self.y_train
        dtype = y.dtype
        train_side = layout.side_shape(y.shape)
        test_side = None
        if fx_train_0 is not None:
            fx_train_0 = as_outputs(fx_train_0, y.shape, dtype, "fx_train_0", _WHERE)
        if fx_test_0 is not None:
            test_side = test_kernel_side(layout, k_test_train, train_side, _WHERE)
            test_shape = layout.full_shape(test_side)
            fx_test_0 = as_outputs(fx_test_0, test_shape, dtype, "fx_test_0", _WHERE)
            k_test_train = jnp.asarray(k_test_train, dtype)
        else:
            k_test_train = None
        if t is not None:
            require_eigh(self.factorization, _WHERE)
            t = as_times(t, dtype, _WHERE)
        return _predict(self, t, fx_train_0, fx_test_0, k_test_train, test_side)


@eqx.filter_jit
def _predict(
    predictor: MSEPredictor,
    t: Array | None,
    fx_train_0: Array | None,
    fx_test_0: Array | None,
    k_test_train: Array | None,
    test_side: tuple | None,
):
    layout, y = predictor.layout, predictor.y_train
    train_side = layout.side_shape(y.shape)
    y2 = layout.outputs_to_2d(y)
    if fx_train_0 is not None:
        fx_train_0 = jnp.broadcast_to(fx_train_0, y.shape)
        residual = layout.outputs_to_2d(fx_train_0) - y2
    else:
        residual = -y2
    if fx_test_0 is not None:
        fx_test_0 = jnp.broadcast_to(fx_test_0, layout.full_shape(test_side))
        k_td = zipped_to_2d(k_test_train)

    if t is None:
        fx_train_t = y
        if fx_test_0 is not None:
            delta = k_td @ predictor.factorization.solve(-residual)
            fx_test_t = fx_test_0 + layout.outputs_from_2d(delta, test_side)
    else:
        eig = predictor.factorization
        t_shape, n_t, n = t.shape, t.ndim, y.size
        tau = t.reshape(-1) * predictor.learning_rate
        lam = eig.regularized_eigenvalues
        v = eig.check_invertible(eig.eigenvectors, jnp.any(jnp.isinf(tau)))
        coef = v.T @ residual
        if fx_train_0 is not None:
            delta = jnp.einsum("pi,ti,ic->tpc", v, decay(lam, tau, n), coef)
            delta = delta.reshape(t_shape + delta.shape[1:])
            fx_train_t = fx_train_0 + layout.outputs_from_2d(delta, train_side, n_t)
        if fx_test_0 is not None:
            h = integrated_decay(lam, tau, n)
            delta = jnp.einsum("mi,ti,ic->tmc", k_td @ v, h, coef)
            delta = delta.reshape(t_shape + delta.shape[1:])
            fx_test_t = fx_test_0 + layout.outputs_from_2d(delta, test_side, n_t)

    if fx_test_0 is None:
        return fx_train_t
    if fx_train_0 is None:
        return fx_test_t
    return fx_train_t, fx_test_t


@eqx.filter_jit
def _build(k, y, learning_rate, diag_reg, absolute, solver, layout):
    k2, asymmetric = kernel_defects(zipped_to_2d(k))
    factorization = factorize(k2, diag_reg, absolute, solver)
    return MSEPredictor(factorization, y, learning_rate, layout), asymmetric


def gradient_descent_mse(
    k_train_train: Float[ArrayLike, "..."],
    y_train: Real[ArrayLike, "n *rest"],
    learning_rate: ScalarLike = 1.0,
    diag_reg: ScalarLike = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solver: Solver = "eigh",
) -> MSEPredictor:
    r"""Predicts gradient-flow training on MSE in closed form.

    The counterpart of NT's `gradient_descent_mse`. The outputs follow
    $\dot f = -\frac{\eta}{n} (K + \lambda I)(f - y)$ on the training set (the
    continuous-time limit of gradient descent with step $\eta$ on
    $\frac{1}{2n}\lVert f - y\rVert^2$, $n$ = `y_train.size`), and
    $\dot g = -\frac{\eta}{n} K_{*}(f - y)$ on a test set. This function
    factorizes the kernel once and returns an `MSEPredictor`, a pytree you call
    at any times, initial outputs and test sets.

    **Arguments:**

    - `k_train_train`: the kernel on the training inputs, `(N, N)` for outputs
      `(N, K)` with `trace_axes=(-1,)`; generally the non-traced output axes
      twice, interleaved (`(N, N, K, K)` with `trace_axes=()`).
    - `y_train`: targets.
    - `learning_rate`: $\eta$.
    - `diag_reg`: $\lambda$, relative to the mean diagonal
      $\operatorname{tr}(K)/P$ unless `diag_reg_absolute_scale`.
    - `diag_reg_absolute_scale`: take `diag_reg` as an absolute value.
    - `trace_axes`: output axes the kernel is block-diagonal over (absent from
      the kernel). For channels-first spatial outputs `(N, C, H, W)`, `(1,)`.
    - `solver`: `"eigh"` (default: eigendecomposition, serves every `t`),
      `"cholesky"` (cheaper; `t=None` only), `"cg"` or a `lineax` solver such
      as `lineax.CG(rtol, atol)` (no factorization; `t=None` only).

    **Returns:**

    An `MSEPredictor`. Unlike NT's closure with `lru_cache`s, the factorization
    is computed here, explicitly, by the method `solver` names.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> predictor = et.predict.gradient_descent_mse(ntk_train, y_train)
    >>> ts = jnp.array([0.0, 10.0, jnp.inf])
    >>> f_train, f_test = predictor(ts, 0.0, 0.0, ntk_test_train)   # from f_0 = 0
    >>> f_train.shape, f_test.shape                           # (times, N, outputs)
    ((3, 6, 1), (3, 2, 1))
    >>> decay = jax.scipy.linalg.expm(-10.0 * ntk_train / y_train.size)
    >>> bool(jnp.allclose(f_train[1], y_train - decay @ y_train))  # (I - e^{-tK/n}) y
    True
    >>> bool(jnp.allclose(f_train[-1], y_train, atol=1e-4))   # t = inf interpolates
    True
    ```
    """
    k = as_kernel(k_train_train)
    y = jnp.asarray(y_train, k.dtype)
    layout = OutputLayout.create(y.shape, trace_axes, _WHERE)
    check_train_kernel_shape(layout, k, y.shape, "k_train_train", _WHERE)
    solver = check_solver(solver, k.dtype, _WHERE)
    predictor, asymmetric = _build(
        k,
        y,
        jnp.asarray(learning_rate, k.dtype),
        jnp.asarray(diag_reg, k.dtype),
        bool(diag_reg_absolute_scale),
        solver,
        layout,
    )
    return check_symmetric(predictor, asymmetric, "k_train_train", _WHERE)
