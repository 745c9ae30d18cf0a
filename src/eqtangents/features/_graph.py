r"""Feature maps of message passing on graphs: `Aggregate`."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp

from .._layers.graph import aggregated_axes
from ._features import AbstractFeatureLayer, Features, FeatureShape, as_feature_shape


class Aggregate(AbstractFeatureLayer):
    r"""Features of a sum over the predecessors of each vertex (mirrors
    `et.Aggregate` with a dense pattern).

    The network layer computes $y_j = \sum_i A_{ij} x_i$ channel by channel, with
    $A_{ij}$ the weight of the arc from vertex $i$ to vertex $j$, so its kernels
    are $K' = A_1^\top K A_2$ and $\Theta' = A_1^\top \Theta A_2$ on the
    aggregated axes. The same weighted sum of feature vectors gives them
    exactly, for each example $n$ with its own pattern $A_n$:

    $$\Phi'_{n, j} = \sum_i A_{n, ij}\, \Phi_{n, i}, \qquad
      \Psi'_{n, j} = \sum_i A_{n, ij}\, \Psi_{n, i}.$$

    The batch's patterns ride in `Features.pattern`
    (`Features.from_inputs(x, pattern=A)`), one `(V, V)` adjacency per example.
    With several aggregated axes, flatten `et.Aggregate`'s `(N, *V, *V)` to
    `(N, |V|, |V|)`, the vertices of `V` in row-major order:
    `A.reshape(n, prod(V), prod(V))`. Unlike `et.Aggregate`, a
    missing pattern is an error rather than the identity. Edge lists
    (`et.Aggregate(implementation="sparse")`) are not supported: scatter them
    into dense adjacencies first.

    **Arguments:**

    - `aggregate_axis`: the spatial axes that index vertices, per example and
      channels first (axis `i >= 1` is spatial axis `i`, as for
      `et.Aggregate`); `None` for all spatial axes. Other spatial axes are
      processed independently.
    - `implementation`: `"dense"` (the only one supported).

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 5))      # (N, C, vertices)
    >>> a = jnp.broadcast_to(jnp.eye(5) + jnp.eye(5, k=1), (2, 5, 5))   # a path graph
    >>> fmodel = et.features.Serial(et.features.Conv((1,)), et.features.Aggregate(),
    ...                             et.features.GlobalAvgPool())
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> f = fmodel(et.features.Features.from_inputs(x, pattern=a))
    >>> k = et.Serial(et.Conv(1, (1,)), et.Aggregate(), et.GlobalAvgPool())
    >>> exact = k.kernel(x, None, "ntk", pattern=(a, None))
    >>> bool(jnp.allclose(et.features.kernel(f, get="ntk"), exact))
    True
    ```
    """

    aggregate_axis: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(
        self,
        aggregate_axis: int | tuple[int, ...] | None = None,
        implementation: str = "dense",
    ):
        if implementation != "dense":
            raise ValueError(
                "features.Aggregate supports dense patterns only "
                f"(`implementation='dense'`), got {implementation!r}; scatter edge "
                "lists into weighted adjacencies `(N, V, V)` first."
            )
        if isinstance(aggregate_axis, int) and not isinstance(aggregate_axis, bool):
            aggregate_axis = (aggregate_axis,)
        if aggregate_axis is not None:
            aggregate_axis = tuple(aggregate_axis)
            if not aggregate_axis or not all(
                isinstance(a, int) and not isinstance(a, bool) for a in aggregate_axis
            ):
                raise ValueError(
                    "features.Aggregate: `aggregate_axis` must be None, an int or a "
                    "non-empty tuple of ints (spatial axes, channels first), got "
                    f"{aggregate_axis!r}."
                )
        self.aggregate_axis = aggregate_axis

    def _axes(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The aggregated per-example axes `1 <= axis <= d`, sorted (also the
        array axes of the features `(N, *spatial, d)`)."""
        shape = (1, *spatial)  # channels first; the width does not matter
        return aggregated_axes(self.aggregate_axis, shape, "features.Aggregate")

    def output_shape(self, input_shape) -> FeatureShape:
        shape = as_feature_shape(input_shape, self)
        self._axes(shape.spatial)
        return shape

    def __call__(self, f: Features) -> Features:
        phi = f.nngp_feat
        spatial = tuple(phi.shape[1:-1])
        axes = self._axes(spatial)
        vertices = tuple(spatial[a - 1] for a in axes)
        size = math.prod(vertices)
        n = phi.shape[0]
        pattern = f.pattern
        if pattern is None:
            raise ValueError(
                "features.Aggregate: the features carry no graph pattern; embed the "
                "inputs with `Features.from_inputs(x, pattern=adjacency)`, one "
                f"adjacency {(n, size, size)} per example."
            )
        if tuple(pattern.shape) != (n, size, size):
            raise ValueError(
                f"features.Aggregate: the pattern has shape {pattern.shape}, but "
                f"features of spatial shape {spatial} aggregated over axes {axes} "
                f"need one adjacency per example, {(n, size, size)}"
                + (
                    f" (flatten the vertex shape {vertices} in row-major order)"
                    if len(vertices) > 1
                    else ""
                )
                + "."
            )
        adjacency = pattern.astype(phi.dtype)

        def aggregate(x):
            rest = tuple(a for a in range(1, x.ndim) if a not in axes)
            moved = jnp.transpose(x, (0,) + axes + rest)
            flat = moved.reshape((n, size) + moved.shape[1 + len(axes) :])
            out = jnp.einsum("nij,ni...->nj...", adjacency, flat)
            out = out.reshape(moved.shape)
            return jnp.transpose(out, _inverse((0,) + axes + rest))

        return f.replace(aggregate(phi), aggregate(f.ntk_feat))


def _inverse(permutation: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(permutation)
    for i, p in enumerate(permutation):
        inverse[p] = i
    return tuple(inverse)
