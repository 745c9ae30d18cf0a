r"""Contraction of each example with a constant array: `DotGeneral`."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Layout, Shape
from .reshape import spatial_input, spatial_linear

DimensionNumbers = tuple[
    tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]
]


def _dims(value) -> DimensionNumbers:
    try:
        (lc, rc), (lb, rb) = value
        return (
            (tuple(int(a) for a in lc), tuple(int(a) for a in rc)),
            (tuple(int(a) for a in lb), tuple(int(a) for a in rb)),
        )
    except (TypeError, ValueError):
        raise ValueError(
            "DotGeneral: `dimension_numbers` must be `((lhs_contracting, "
            "rhs_contracting), (lhs_batch, rhs_batch))`, tuples of axes, got "
            f"{value!r}."
        ) from None


class DotGeneral(AbstractLayer):
    r"""Contraction of each example with a constant array, `jax.lax.dot_general`.

    With `rhs` given the layer computes `dot_general(x, rhs, dimension_numbers)`,
    with `lhs` given `dot_general(lhs, x, dimension_numbers)`; the input's axes
    in `dimension_numbers` are per example and channels first, `(C, *spatial)`
    (spatial axis `i` is axis `i`, as in Neural Tangents' `(N, *spatial, C)`;
    its batch axis has no counterpart). The channel axis can be neither
    contracted nor batched, so the layer is one linear map $T$ of the spatial
    axes applied to every channel; the channel axis of the result is moved to
    the front, the other axes keep `dot_general`'s order. The kernel is
    $K' = T K T^\top$ on both positions. Without contraction $T$ only multiplies
    (and broadcasts) entries, so the spatial diagonal suffices:
    $K'[p, p] = K[q(p), q(p)]\, a_p^2$.

    The constant is not a parameter: it is wrapped in `jax.lax.stop_gradient`,
    so it adds nothing to an empirical NTK.

    **Arguments:**

    - `lhs`, `rhs`: the constant array; give at most one. With neither the layer
      is the identity.
    - `dimension_numbers`: `((lhs_contracting, rhs_contracting), (lhs_batch,
      rhs_batch))`.
    - `precision`: `jax.lax` precision of the contraction.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 4))      # (N, C, L)
    >>> average = jnp.ones((4, 1)) / 4                      # T: the mean over L
    >>> layer = et.DotGeneral(rhs=average, dimension_numbers=(((1,), (0,)), ((), ())))
    >>> layer.output_shape((3, 4))
    (3, 1)
    >>> k = et.Serial(layer, et.Flatten()).kernel(x, None, "nngp")    # T^T K T
    >>> bool(jnp.allclose(k, et.GlobalAvgPool().kernel(x, None, "nngp")))
    True
    ```
    """

    lhs: Float[Array, "..."] | None
    rhs: Float[Array, "..."] | None
    dimension_numbers: DimensionNumbers = eqx.field(static=True)
    precision: jax.lax.Precision | None = eqx.field(static=True)

    def __init__(
        self,
        *,
        lhs: Float[ArrayLike, "..."] | None = None,
        rhs: Float[ArrayLike, "..."] | None = None,
        dimension_numbers: Sequence = (((), ()), ((), ())),
        precision: jax.lax.Precision | None = None,
    ):
        if lhs is not None and rhs is not None:
            raise ValueError(
                "DotGeneral: give at most one of `lhs` and `rhs`; the layer's input "
                "is the other factor."
            )
        self.lhs = None if lhs is None else jnp.asarray(lhs, dtype=float)
        self.rhs = None if rhs is None else jnp.asarray(rhs, dtype=float)
        self.dimension_numbers = _dims(dimension_numbers)
        self.precision = precision

    @property
    def _other(self) -> Array | None:
        return self.lhs if self.rhs is None else self.rhs

    def _input_axes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The input's contracting and batch axes, as given."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        return (rc, rb) if self.rhs is None else (lc, lb)

    def _numbers(self, ndim: int) -> DimensionNumbers:
        """`dimension_numbers` with negative axes counted from the end."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        n_l, n_r = (
            (ndim, self.rhs.ndim) if self.rhs is not None else (self.lhs.ndim, ndim)
        )
        lc, lb = (tuple(a % n_l for a in axes) for axes in (lc, lb))
        rc, rb = (tuple(a % n_r for a in axes) for axes in (rc, rb))
        return (lc, rc), (lb, rb)

    def _dot(self, z: Array) -> Array:
        """The contraction of `z` `(M, *spatial)`, channel axis in front."""
        other = jax.lax.stop_gradient(self._other).astype(z.dtype)
        numbers = self._numbers(z.ndim)
        if self.rhs is not None:
            out = jax.lax.dot_general(z, other, numbers, self.precision)
            channel = len(numbers[1][0])  # after the batch axes
        else:
            out = jax.lax.dot_general(other, z, numbers, self.precision)
            (oc, _), (ob, _) = numbers  # after the batch and lhs's free axes
            channel = len(ob) + other.ndim - len(oc) - len(ob)
        return jnp.moveaxis(out, channel, 0)

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = spatial_input(self, input_shape)
        if self._other is None:
            return shape
        contracting, batch = self._input_axes()
        ndim, n_other = len(shape), self._other.ndim
        (lc, rc), (lb, rb) = self.dimension_numbers
        other_axes = rc + rb if self.rhs is not None else lc + lb
        axes = [a % ndim if -ndim <= a < ndim else None for a in contracting + batch]
        if None in axes or not all(-n_other <= a < n_other for a in other_axes):
            raise ValueError(
                f"DotGeneral(dimension_numbers={self.dimension_numbers}) names an "
                f"axis out of range for its input {shape} (per example, channels "
                "first: axis 0 is the channel axis, 1.. are spatial) or for the "
                f"constant of shape {self._other.shape}."
            )
        if 0 in axes:
            raise ValueError(
                f"DotGeneral(dimension_numbers={self.dimension_numbers}) contracts "
                "or batches the channel axis (axis 0 of an example `(C, *spatial)`),"
                " which is infinitely wide in the kernel; contract spatial axes "
                "only (Neural Tangents' spatial axis i is axis i here)."
            )
        try:
            out = jax.eval_shape(self._dot, jax.ShapeDtypeStruct(shape, jnp.float32))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"DotGeneral: the constant of shape {self._other.shape} does not fit "
                f"an input of shape {shape} with dimension_numbers="
                f"{self.dimension_numbers}: {error}"
            ) from None
        return tuple(out.shape)

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        if self._other is None:
            return x
        self.output_shape(tuple(x.shape))
        return self._dot(x)

    def output_mask(self, mask: Array, input_shape: Shape) -> Array:
        raise ValueError(
            "DotGeneral does not support masks (`mask_constant`): its contraction "
            "mixes padded and unpadded positions. Remove `mask_constant`, or "
            "apply the constant array before masking the inputs."
        )

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        if self._other is not None and self._input_axes()[0]:
            return True
        return output_full

    def propagate(self, k: Kernel) -> Kernel:
        shape1, shape2 = self.output_shape(k.shape1), self.output_shape(k.shape2)
        if self._other is None:
            return k
        fn_diagonal = None
        if not self._input_axes()[0]:
            squared = eqx.tree_at(
                lambda d: d.rhs if d.rhs is not None else d.lhs,
                self,
                replace_fn=jnp.square,
            )
            fn_diagonal = squared._dot
        return spatial_linear(self, k, self._dot, fn_diagonal, shape1, shape2)
