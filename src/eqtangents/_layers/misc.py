"""Small structural layers."""

from __future__ import annotations

from jaxtyping import PRNGKeyArray

from .._layer import AbstractLayer


class Identity(AbstractLayer):
    """The identity: `f(x) = x`, kernel unchanged."""

    def __call__(self, x, *, key: PRNGKeyArray | None = None):
        return x

    def output_shape(self, input_shape):
        return input_shape

    def propagate(self, k):
        return k
