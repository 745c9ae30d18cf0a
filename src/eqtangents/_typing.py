"""Type aliases shared by the public signatures."""

from jaxtyping import Array, Float

Scalar = int | float | Float[Array, ""]
"""A real hyperparameter: a Python number, or a 0-d array to differentiate."""
