"""Small structural layers."""

from __future__ import annotations

from jaxtyping import PRNGKeyArray

from .._layer import AbstractLayer


class Identity(AbstractLayer):
    """The identity: `f(x) = x`, kernel unchanged.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> k = et.Identity().kernel(x, None, "nngp")             # the input kernel
    >>> bool(jnp.allclose(k, x @ x.T / 4))
    True
    ```
    """

    def __call__(self, x, *, key: PRNGKeyArray | None = None):
        return x

    def output_shape(self, input_shape):
        return input_shape

    def propagate(self, k):
        return k
