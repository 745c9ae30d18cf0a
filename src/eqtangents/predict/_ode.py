"""Function-space gradient descent on any loss, by an ODE solver: `gradient_descent`."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._mse import as_outputs, check_predict_inputs, test_kernel_side
from ._utils import (
    Axes,
    OutputLayout,
    Times,
    as_kernel,
    as_times,
    check_no_time_none,
    check_symmetric,
    check_train_kernel_shape,
    kernel_defects,
    zipped_to_2d,
)

_WHERE = "gradient_descent"


def _optional_array(x):
    return None if x is None else jnp.asarray(x)


class ODEState(eqx.Module):
    """The state of function-space training: outputs and auxiliary variables.

    Pass one to a `GradientDescentPredictor` to resume training from it (its
    time is the new $t = 0$); a state in gives states out.

    **Fields:**

    - `fx_train`, `fx_test`: outputs on the training and test sets.
    - `qx_train`, `qx_test`: momentum variables ($\\dot f$ in the units of the
      momentum ODE), `None` without momentum.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> mse = lambda fx, y: 0.5 * jnp.mean((fx - y) ** 2)
    >>> predictor = et.predict.gradient_descent(mse, ntk_train, y_train, momentum=0.9)
    >>> start = et.predict.ODEState(jnp.zeros((6, 1)), jnp.zeros((2, 1)))
    >>> half = predictor(1.0, start, None, ntk_test_train)  # a state in, a state out
    >>> type(half).__name__
    'ODEState'
    >>> resumed = predictor(1.0, half, None, ntk_test_train)       # train 1 + 1 ...
    >>> direct = predictor(2.0, start, None, ntk_test_train)       # ... or 2 at once
    >>> bool(jnp.allclose(resumed.fx_test, direct.fx_test, atol=1e-4))
    True
    ```
    """

    fx_train: Float[Array, "..."] | None = eqx.field(
        default=None, converter=_optional_array
    )
    fx_test: Float[Array, "..."] | None = eqx.field(
        default=None, converter=_optional_array
    )
    qx_train: Float[Array, "..."] | None = eqx.field(
        default=None, converter=_optional_array
    )
    qx_test: Float[Array, "..."] | None = eqx.field(
        default=None, converter=_optional_array
    )


def _default_tolerance(dtype) -> float:
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


class _VectorField(eqx.Module):
    """The right-hand side of the training ODE (a pytree, so solves are cached)."""

    loss: Callable
    k_train_train: Float[Array, "p p"]
    y_train: Float[Array, "..."]
    friction: Float[Array, ""] | None
    layout: OutputLayout = eqx.field(static=True)
    train_side: tuple[int, ...] = eqx.field(static=True)
    test_side: tuple[int, ...] | None = eqx.field(static=True)

    def __call__(self, t, s: ODEState, k_td: Array | None) -> ODEState:
        layout, y = self.layout, self.y_train
        grad = jax.grad(lambda f: self.loss(f, y))(s.fx_train)
        g2 = layout.outputs_to_2d(grad)
        d_train = -layout.outputs_from_2d(self.k_train_train @ g2, self.train_side)
        d_test = None
        if s.fx_test is not None:
            d_test = -layout.outputs_from_2d(k_td @ g2, self.test_side)
        if self.friction is None:
            return ODEState(d_train, d_test)
        if d_test is not None:
            d_test = d_test + self.friction * s.qx_test
        return ODEState(
            s.qx_train, s.qx_test, d_train + self.friction * s.qx_train, d_test
        )


class GradientDescentPredictor(eqx.Module):
    r"""Function-space gradient descent [with momentum] on a loss, solved as an ODE.

    Returned by `gradient_descent`; call it as
    `predictor(t, fx_train_or_state_0, fx_test_0, k_test_train)`. It
    integrates the function-space flow of gradient descent with kernel
    $\Theta$,

    $$\dot f_{\text{train}} = -\eta\, \Theta_{tt}\, \nabla_f L, \qquad
      \dot f_{\text{test}} = -\eta\, \Theta_{*t}\, \nabla_f L,$$

    (with momentum, a second-order system) by an adaptive `diffrax` solver.

    **Fields:**

    - `loss`: `loss(fx_train, y_train) -> scalar`.
    - `k_train_train`: the kernel, 2-D.
    - `y_train`: targets.
    - `learning_rate`, `momentum`: optimizer hyperparameters (`momentum` is
      `None` for plain gradient descent).
    - `solver`, `rtol`, `atol`, `max_steps`: the `diffrax` solver and its
      adaptive step-size tolerances.
    - `layout`: the output layout (`trace_axes`).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> mse = lambda fx, y: 0.5 * jnp.mean((fx - y) ** 2)
    >>> predictor = et.predict.gradient_descent(mse, ntk_train, y_train)
    >>> type(predictor).__name__
    'GradientDescentPredictor'
    >>> f_train, f_test = predictor(jnp.array([1.0, 2.0]), jnp.zeros((6, 1)),
    ...                             jnp.zeros((2, 1)), ntk_test_train)
    >>> f_train.shape                                          # (times, N, outputs)
    (2, 6, 1)
    ```
    """

    loss: Callable
    k_train_train: Float[Array, "p p"]
    y_train: Float[Array, "..."]
    learning_rate: Float[Array, ""]
    momentum: Float[Array, ""] | None
    solver: diffrax.AbstractSolver
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    layout: OutputLayout = eqx.field(static=True)

    def __call__(
        self,
        t: Times,
        fx_train_or_state_0: None
        | ScalarLike
        | Real[ArrayLike, "..."]
        | ODEState = 0.0,
        fx_test_0: None | ScalarLike | Real[ArrayLike, "..."] = None,
        k_test_train: Float[ArrayLike, "..."] | None = None,
    ):
        r"""Outputs on the training [and test] set at time[s] `t`.

        Without momentum, $\dot f = -\eta\, \Theta \nabla_f L(f)$ and
        $\dot g = -\eta\, \Theta_{*} \nabla_f L(f)$. With momentum $\mu$ the ODE
        is second order, solved in units of $\sqrt\eta$ (as in NT):
        $\ddot f = -\Theta \nabla_f L(f) + \frac{\mu - 1}{\sqrt\eta} \dot f$, at
        time $\sqrt\eta\, t$.

        **Arguments:**

        - `t`: finite times $\ge 0$, a scalar or an array of any shape and order.
          (NT's `t=None` is rejected: the ODE is not integrated to infinity.)
        - `fx_train_or_state_0`: outputs on the training set at $t = 0$
          (`None`: zeros, and no training outputs returned), or an `ODEState`.
        - `fx_test_0`: outputs on the test set at $t = 0$ (`None` when a state
          is passed; it holds them).
        - `k_test_train`: kernel between test and training inputs.

        **Returns:**

        `fx_train_t`, `fx_test_t` or both, with the leading shape of `t`; an
        `ODEState` (with leading time axes) when a state was passed.
        """
        check_no_time_none(t, _WHERE)
        is_state = isinstance(fx_train_or_state_0, ODEState)
        if is_state:
            if fx_test_0 is not None:
                raise ValueError(
                    f"{_WHERE}: `fx_test_0` is part of the `ODEState`; pass "
                    "`fx_test_0=None` with a state."
                )
            fx_test_0 = fx_train_or_state_0.fx_test
            check_predict_inputs(
                fx_train_or_state_0.fx_train, fx_test_0, k_test_train, _WHERE
            )
        else:
            check_predict_inputs(fx_train_or_state_0, fx_test_0, k_test_train, _WHERE)
        layout, y = self.layout, self.y_train
        dtype = y.dtype
        train_side = layout.side_shape(y.shape)
        if is_state:
            s = fx_train_or_state_0
            fx_train_0, qx_train, qx_test = s.fx_train, s.qx_train, s.qx_test
        else:
            fx_train_0, qx_train, qx_test = fx_train_or_state_0, None, None
        if self.momentum is None and (qx_train is not None or qx_test is not None):
            raise ValueError(
                f"{_WHERE}: the state holds momentum variables, but this predictor "
                "has `momentum=None`."
            )
        test_side = None
        if fx_train_0 is not None:
            fx_train_0 = as_outputs(fx_train_0, y.shape, dtype, "fx_train_0", _WHERE)
        if qx_train is not None:
            qx_train = as_outputs(qx_train, y.shape, dtype, "qx_train", _WHERE)
        if fx_test_0 is not None:
            test_side = test_kernel_side(layout, k_test_train, train_side, _WHERE)
            test_shape = layout.full_shape(test_side)
            fx_test_0 = as_outputs(fx_test_0, test_shape, dtype, "fx_test_0", _WHERE)
            if qx_test is not None:
                qx_test = as_outputs(qx_test, test_shape, dtype, "qx_test", _WHERE)
            k_test_train = jnp.asarray(k_test_train, dtype)
        else:
            k_test_train = qx_test = None
        if fx_train_0 is None:
            fx_train_0 = jnp.zeros(y.shape, dtype)
        if self.momentum is not None:
            if qx_train is None:
                qx_train = jnp.zeros(y.shape, dtype)
            if fx_test_0 is not None and qx_test is None:
                qx_test = jnp.zeros(test_shape, dtype)
        t = as_times(t, dtype, _WHERE)
        states = _solve(
            self, t, fx_train_0, fx_test_0, qx_train, qx_test, k_test_train, test_side
        )
        if is_state:
            return states
        if fx_test_0 is None:
            return states.fx_train
        if fx_train_or_state_0 is None:
            return states.fx_test
        return states.fx_train, states.fx_test


@eqx.filter_jit
def _solve(
    predictor: GradientDescentPredictor,
    t: Array,
    fx_train_0: Array | None,
    fx_test_0: Array | None,
    qx_train: Array | None,
    qx_test: Array | None,
    k_test_train: Array | None,
    test_side: tuple | None,
) -> ODEState:
    """Integrates from 0 and returns the states at `t` (any shape and order)."""
    layout, y = predictor.layout, predictor.y_train
    dtype = y.dtype
    train_side = layout.side_shape(y.shape)
    fx_train_0 = jnp.zeros(y.shape, dtype) if fx_train_0 is None else fx_train_0
    fx_train_0 = jnp.broadcast_to(fx_train_0, y.shape)
    k_td = None
    if fx_test_0 is not None:
        test_shape = layout.full_shape(test_side)
        fx_test_0 = jnp.broadcast_to(fx_test_0, test_shape)
        k_td = zipped_to_2d(k_test_train)
    if predictor.momentum is None:
        scale, friction = predictor.learning_rate, None
        state_0 = ODEState(fx_train_0, fx_test_0)
    else:
        scale = jnp.sqrt(predictor.learning_rate)
        friction = (predictor.momentum - 1) / scale
        qx_train = jnp.zeros(y.shape, dtype) if qx_train is None else qx_train
        qx_train = jnp.broadcast_to(qx_train, y.shape)
        if fx_test_0 is not None:
            qx_test = jnp.zeros(test_shape, dtype) if qx_test is None else qx_test
            qx_test = jnp.broadcast_to(qx_test, test_shape)
        state_0 = ODEState(fx_train_0, fx_test_0, qx_train, qx_test)
    field = _VectorField(
        predictor.loss,
        predictor.k_train_train,
        y,
        friction,
        layout,
        train_side,
        test_side,
    )
    times = t.reshape(-1) * scale
    times = eqx.error_if(
        times, ~jnp.all(jnp.isfinite(times)), f"{_WHERE}: times must be finite."
    )
    order = jnp.argsort(times)
    ts = times[order]
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        predictor.solver,
        t0=jnp.zeros((), dtype),
        t1=ts[-1],
        dt0=None,
        y0=state_0,
        args=k_td,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(
            rtol=predictor.rtol, atol=predictor.atol
        ),
        max_steps=predictor.max_steps,
    )
    inverse = jnp.argsort(order)
    return jax.tree_util.tree_map(
        lambda x: x[inverse].reshape(t.shape + x.shape[1:]), sol.ys
    )


@eqx.filter_jit
def _kernel_2d(k):
    return kernel_defects(zipped_to_2d(k))


def gradient_descent(
    loss: Callable,
    k_train_train: Float[ArrayLike, "..."],
    y_train: Real[ArrayLike, "n *rest"],
    learning_rate: ScalarLike = 1.0,
    momentum: ScalarLike | None = None,
    trace_axes: Axes = (-1,),
    *,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 16384,
) -> GradientDescentPredictor:
    r"""Predicts function-space training on any differentiable loss by an ODE.

    The counterpart of NT's `gradient_descent`.

    The outputs of an infinitely wide (or linearized) network trained by
    gradient descent [with momentum] on `loss` follow an ODE driven by the
    kernel; `diffrax` solves it with an adaptive step size.

    **Arguments:**

    - `loss`: `loss(fx_train, y_train) -> scalar`, differentiable in `fx_train`.
    - `k_train_train`, `y_train`, `trace_axes`: as in `gradient_descent_mse`.
    - `learning_rate`: $\eta$.
    - `momentum`: $\mu$ for (heavy-ball) momentum, or `None`.
    - `solver`: a `diffrax` solver (default `diffrax.Tsit5()`).
    - `rtol`, `atol`: tolerances of the PID step-size controller (default
      `1e-10` in float64, `1e-5` in float32).
    - `max_steps`: the most solver steps; running out raises an error.

    **Returns:**

    A `GradientDescentPredictor`.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> mse = lambda fx, y: 0.5 * jnp.mean((fx - y) ** 2)
    >>> ode = et.predict.gradient_descent(mse, ntk_train, y_train)
    >>> f_train, f_test = ode(5.0, jnp.zeros((6, 1)), jnp.zeros((2, 1)), ntk_test_train)
    >>> exact = et.predict.gradient_descent_mse(ntk_train, y_train)
    >>> g_train, g_test = exact(5.0, 0.0, 0.0, ntk_test_train)       # closed form
    >>> bool(jnp.allclose(f_test, g_test, atol=1e-4))
    True
    >>> heavy_ball = et.predict.gradient_descent(mse, ntk_train, y_train, momentum=0.9)
    ```
    """
    k = as_kernel(k_train_train)
    y = jnp.asarray(y_train, k.dtype)
    layout = OutputLayout.create(y.shape, trace_axes, _WHERE)
    check_train_kernel_shape(layout, k, y.shape, "k_train_train", _WHERE)
    k2, asymmetric = _kernel_2d(k)
    k2 = check_symmetric(k2, asymmetric, "k_train_train", _WHERE)
    tol = _default_tolerance(k.dtype)
    return GradientDescentPredictor(
        loss,
        k2,
        y,
        jnp.asarray(learning_rate, k.dtype),
        None if momentum is None else jnp.asarray(momentum, k.dtype),
        diffrax.Tsit5() if solver is None else solver,
        float(tol if rtol is None else rtol),
        float(tol if atol is None else atol),
        int(max_steps),
        layout,
    )
