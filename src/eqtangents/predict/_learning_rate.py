"""The largest stable learning rate of MSE training: `max_learning_rate`."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, ScalarLike

from ._utils import zipped_to_2d


def max_learning_rate(
    ntk_train_train: Float[ArrayLike, "..."],
    y_train_size: int | None = None,
    momentum: ScalarLike | None = 0.0,
    eps: ScalarLike = 1e-12,
) -> Float[Array, ""]:
    r"""The largest learning rate for which gradient descent on MSE converges.

    For the loss $\frac{1}{2n}\lVert f(x) - y\rVert^2$ ($n$ = `y_train_size`)
    the linearized dynamics $f \mapsto f - \frac{\eta}{n}\Theta(f - y)$
    contracts for $\eta < 2n / \lambda_{\max}(\Theta)$; heavy-ball momentum
    $\mu$ widens this to

    $$\eta_{\max} = \frac{2 (1 + \mu)\, n}{\lambda_{\max}(\Theta) + \epsilon}.$$

    **Arguments:**

    - `ntk_train_train`: the NTK on the training inputs (any interleaved
      layout; it is flattened to 2-D).
    - `y_train_size`: $n$; by default the side of the 2-D kernel (right for
      `trace_axes=()`).
    - `momentum`: $\mu$ (`None` is 0).
    - `eps`: added to $\lambda_{\max}$ to avoid dividing by zero.

    **Returns:**

    $\eta_{\max}$, a scalar array (jittable and differentiable).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> ntk_train = model.kernel(x_train, None, "ntk")
    >>> ntk_test_train = model.kernel(x_test, x_train, "ntk")
    >>> lr = et.predict.max_learning_rate(ntk_train, y_train.size)
    >>> bool(jnp.isclose(lr, 2 * y_train.size / jnp.linalg.eigvalsh(ntk_train)[-1]))
    True
    >>> mse = et.predict.gradient_descent_mse
    >>> predictor = mse(ntk_train, y_train, learning_rate=0.5 * lr)
    ```
    """
    k = zipped_to_2d(jnp.asarray(ntk_train_train))
    if not jnp.issubdtype(k.dtype, jnp.floating):
        k = k.astype(jnp.result_type(float))
    n = k.shape[0] if y_train_size is None else y_train_size
    momentum = 0.0 if momentum is None else momentum
    return _max_learning_rate(k, n, jnp.asarray(momentum, k.dtype), eps)


@eqx.filter_jit
def _max_learning_rate(k, n, momentum, eps):
    top = jnp.linalg.eigvalsh(k)[-1]
    return 2 * (1 + momentum) * n / (top + eps)
