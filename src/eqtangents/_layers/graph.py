r"""Message passing on graphs: `Aggregate`.

The spatial axes of an example are the vertices of a graph (a sequence of
tokens, the pixels of an image, ...). A pattern says, for each example, which
vertices send to which: `Aggregate` replaces every vertex by the weighted sum
of its predecessors, channel by channel.
"""

from __future__ import annotations

import math
import string
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

from .._kernel import Kernel
from .._layer import AbstractLayer, Layout, Shape, as_shape

Implementation = Literal["dense", "sparse"]


class Aggregate(AbstractLayer):
    r"""Sum over the predecessors of each vertex of a graph (a graph network).

    With a dense pattern $A$ (a weighted adjacency, $A_{ij}$ the weight of the
    arc from vertex $i$ to vertex $j$) the layer computes, for every channel,
    $y_j = \sum_i A_{ij}\, x_i$. Each example brings its own pattern, passed at
    call time, `net(x, pattern=A)`, and as a pair to the kernel,
    `model.kernel(x1, x2, pattern=(A1, A2))`. The layer is linear and has no
    weights, so

    $$K'_{n_1 n_2} = A_{1,n_1}^\top K_{n_1 n_2} A_{2,n_2}, \qquad
      \Theta'_{n_1 n_2} = A_{1,n_1}^\top \Theta_{n_1 n_2} A_{2,n_2},$$

    on the aggregated axes (Du et al. 2019, "Graph Neural Tangent Kernel").
    It mixes positions, so it needs full spatial covariances. A pattern of
    `None` (on one side, or both) is the identity: no aggregation. Masks
    (`mask_constant`) pass through unchanged; masked vertices send zeros.

    **Arguments:**

    - `aggregate_axis`: the spatial axes that index vertices, per example and
      channels first (spatial axis `i` is axis `i`, as in Neural Tangents'
      `(N, *spatial, C)` layout); `None` for all spatial axes. Other spatial
      axes are processed independently.
    - `implementation`: the pattern's format.
      - `"dense"`: per example an array `(*V, *V)`, the vertex shape `V` twice
        (`(B, *V, *V)` for a batch), costing $O(|V|^2)$ in the forward pass.
      - `"sparse"`: per example an integer edge list `(n_edges, K, 2)` (or
        `(n_edges, 2)` for one aggregated axis): the tail (sender) and head
        (receiver) coordinates of each arc of weight 1. Repeated arcs add up;
        an arc with a negative coordinate is ignored (padding for edge lists of
        different lengths). The forward pass is a segment sum, $O(|V| + |E|)$;
        the kernel scatters the arcs into the dense adjacency first.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 5))      # (N, C, vertices)
    >>> a = jnp.broadcast_to(jnp.eye(5) + jnp.eye(5, k=1), (2, 5, 5))   # a path graph
    >>> model = et.Serial(et.Conv(64, (1,)), et.Relu(), et.Aggregate(),
    ...                   et.Conv(64, (1,)), et.Relu(), et.GlobalAvgPool(), et.Dense(1))
    >>> model.kernel(x, None, "nngp", pattern=(a, None)).shape
    (2, 2)
    >>> net = model.init(jax.random.key(1), x.shape[1:])
    >>> jax.vmap(lambda xi, ai: net(xi, pattern=ai))(x, a).shape
    (2, 1)
    >>> k = et.Aggregate().kernel(x, None, "nngp", pattern=(a, None))   # A^T K A
    >>> y = jnp.einsum("ncv,nvw->ncw", x, a)                 # the sums themselves
    >>> bool(jnp.allclose(k, et.Identity().kernel(y, None, "nngp")))
    True
    ```
    """

    aggregate_axis: tuple[int, ...] | None = eqx.field(static=True)
    implementation: Implementation = eqx.field(static=True)
    call_keywords = frozenset({"pattern"})

    def __init__(
        self,
        aggregate_axis: int | tuple[int, ...] | None = None,
        implementation: str = "dense",
    ):
        if isinstance(aggregate_axis, int):
            aggregate_axis = (aggregate_axis,)
        if aggregate_axis is not None:
            aggregate_axis = tuple(aggregate_axis)
            if not aggregate_axis or not all(
                isinstance(a, int) for a in aggregate_axis
            ):
                raise ValueError(
                    "Aggregate: `aggregate_axis` must be None, an int or a non-empty "
                    f"tuple of ints (spatial axes, channels first), got "
                    f"{aggregate_axis!r}."
                )
        if implementation not in ("dense", "sparse"):
            raise ValueError(
                "Aggregate: `implementation` must be 'dense' (an adjacency array) "
                f"or 'sparse' (an edge list), got {implementation!r}."
            )
        self.aggregate_axis = aggregate_axis
        self.implementation = implementation

    # ----------------------------------------------------------------- shapes

    def _axes(self, shape: Shape) -> tuple[int, ...]:
        """The aggregated spatial axes, `1 <= axis <= d`, sorted."""
        return aggregated_axes(self.aggregate_axis, shape, "Aggregate")

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = as_shape(input_shape, self)
        self._axes(shape)
        return shape

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return True

    # --------------------------------------------------------------- patterns

    def _dense(self, pattern: Array, shape: Shape, batch: bool, dtype) -> Array:
        """The dense adjacency `(*V, *V)` (with a leading batch axis if `batch`)."""
        vertices = tuple(shape[a] for a in self._axes(shape))
        lead = pattern.shape[:1] if batch else ()
        if self.implementation == "dense":
            expected = lead + vertices + vertices
            if pattern.shape != expected:
                raise ValueError(
                    f"Aggregate: a dense pattern for inputs {shape} must have shape "
                    f"{expected} ({'batch, ' if batch else ''}vertex shape {vertices} "
                    f"twice), got {pattern.shape}. For edge lists use "
                    "`implementation='sparse'`."
                )
            return pattern.astype(dtype)
        tails, heads, valid = self._edges(pattern, vertices, batch)
        size = math.prod(vertices)

        def scatter(t, h, v):
            flat = jnp.zeros((size * size,), dtype)
            index = jnp.where(v, t * size + h, size * size)
            return flat.at[index].add(1, mode="drop").reshape(vertices + vertices)

        return (
            jax.vmap(scatter)(tails, heads, valid)
            if batch
            else scatter(tails, heads, valid)
        )

    def _edges(self, pattern: Array, vertices: tuple[int, ...], batch: bool):
        """Flat tail and head indices of each arc and whether the arc is valid."""
        k = len(vertices)
        core = pattern.shape[1:] if batch else pattern.shape
        if k == 1 and len(core) == 2:
            pattern = pattern[..., None, :]
            core = core[:1] + (1,) + core[1:]
        if len(core) != 3 or core[1:] != (k, 2):
            raise ValueError(
                f"Aggregate: a sparse pattern must be an edge list `(n_edges, {k}, 2)` "
                f"per example (tail and head coordinates on {k} aggregated axes"
                + (", or `(n_edges, 2)`" if k == 1 else "")
                + f"), got {'per-example ' if batch else ''}shape {core}."
            )
        if not jnp.issubdtype(pattern.dtype, jnp.integer):
            raise ValueError(
                f"Aggregate: a sparse pattern holds vertex coordinates and must be "
                f"an integer array, got {pattern.dtype}."
            )
        valid = jnp.all(pattern >= 0, axis=(-2, -1))
        coords = jnp.moveaxis(jnp.where(pattern >= 0, pattern, 0), -2, 0)
        tails = jnp.ravel_multi_index(tuple(coords[..., 0]), vertices, mode="clip")
        heads = jnp.ravel_multi_index(tuple(coords[..., 1]), vertices, mode="clip")
        return tails, heads, valid

    # ----------------------------------------------------------- forward pass

    def __call__(
        self,
        x: Float[Array, "c *spatial"],
        *,
        key: PRNGKeyArray | None = None,
        pattern: Shaped[ArrayLike, "..."] | None = None,
    ) -> Float[Array, "c *spatial"]:
        shape = self.output_shape(tuple(x.shape))
        if pattern is None:
            return x
        pattern = jnp.asarray(pattern)
        axes = self._axes(shape)
        if self.implementation == "dense":
            adjacency = self._dense(pattern, shape, False, x.dtype)
            return _apply(x, adjacency, axes)
        vertices = tuple(shape[a] for a in axes)
        tails, heads, valid = self._edges(pattern, vertices, False)
        rest = [a for a in range(x.ndim) if a not in axes]
        moved = jnp.transpose(x, axes + tuple(rest))
        flat = moved.reshape((-1,) + moved.shape[len(axes) :])
        messages = flat[tails] * valid.reshape((-1,) + (1,) * (flat.ndim - 1))
        out = jax.ops.segment_sum(messages, heads, num_segments=flat.shape[0])
        out = out.reshape(moved.shape)
        return jnp.transpose(out, _inverse(axes + tuple(rest)))

    # ------------------------------------------------------------------ kernel

    def propagate(self, k: Kernel) -> Kernel:
        self.output_shape(k.shape1)
        if k.pattern1 is None and k.pattern2 is None:
            return k
        if k.diagonal_spatial:
            raise ValueError(
                "Aggregate mixes vertices, so it needs full spatial covariances, "
                "but its input kernel holds only their diagonal. Compute the kernel "
                "from the inputs with `model.kernel(x1, x2, pattern=...)`, not from "
                "a kernel built with `diagonal_spatial=True`."
            )
        axes = tuple(a - 1 for a in self._axes(k.shape1))  # among spatial axes
        dtype = k.nngp.dtype

        def dense(p, shape):
            return None if p is None else self._dense(p, shape, True, dtype)

        a1 = dense(k.pattern1, k.shape1)
        a2 = dense(k.pattern2, k.shape2)

        def both(cov, left, right, batch_ndim):
            return _sandwich(cov, left, right, axes, batch_ndim)

        return k.replace(
            nngp=both(k.nngp, a1, a2, 2),
            ntk=None if k.ntk is None else both(k.ntk, a1, a2, 2),
            cov1=both(k.cov1, a1, a1, 1),
            cov2=None if k.cov2 is None else both(k.cov2, a2, a2, 1),
        )


def _inverse(permutation: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(permutation)
    for i, p in enumerate(permutation):
        inverse[p] = i
    return tuple(inverse)


def _apply(x: Array, adjacency: Array, axes: tuple[int, ...]) -> Array:
    """`y_j = sum_i A_ij x_i` over the vertex axes `axes` of one example `x`."""
    letters = iter(string.ascii_letters)
    x_sub = [next(letters) for _ in range(x.ndim)]
    out_sub = list(x_sub)
    a_in = [x_sub[a] for a in axes]
    a_out = [next(letters) for _ in axes]
    for a, new in zip(axes, a_out):
        out_sub[a] = new
    a_sub = a_in + a_out
    return jnp.einsum(
        f"{''.join(x_sub)},{''.join(a_sub)}->{''.join(out_sub)}", x, adjacency
    )


def _sandwich(cov, left, right, axes, batch_ndim: int) -> Array:
    r"""$A_l^\top C A_r$ on the interleaved spatial pairs `axes` of a covariance.

    `cov` is `(N1, N2, s_1, s_1', ...)` (`batch_ndim=2`; `left` is indexed by
    `N1`, `right` by `N2`) or `(N, s_1, s_1', ...)` (`batch_ndim=1`, both by
    `N`). A side whose adjacency is `None` is left as it is.
    """
    letters = iter(string.ascii_letters)
    sub = [next(letters) for _ in range(cov.ndim)]
    out = list(sub)
    operands, subs = [cov], ["".join(sub)]
    for side, adjacency in ((0, left), (1, right)):
        if adjacency is None:
            continue
        batch = sub[0] if batch_ndim == 1 else sub[side]
        given = [sub[batch_ndim + 2 * a + side] for a in axes]
        new = [next(letters) for _ in axes]
        for a, letter in zip(axes, new):
            out[batch_ndim + 2 * a + side] = letter
        operands.append(adjacency)
        subs.append(batch + "".join(given) + "".join(new))
    return jnp.einsum(f"{','.join(subs)}->{''.join(out)}", *operands)


def aggregated_axes(aggregate_axis, shape: Shape, where: str) -> tuple[int, ...]:
    """The spatial axes `1 <= axis <= d` named by `aggregate_axis` (all of them
    for `None`) of per-example inputs `shape = (C, *spatial)`, sorted;
    `where` names the layer in errors."""
    d = len(shape) - 1
    if d == 0:
        raise ValueError(
            f"{where} needs vertices along spatial axes, `(C, *V)`, but got "
            f"per-example shape {shape}; a flat input has a single vertex."
        )
    if aggregate_axis is None:
        return tuple(range(1, d + 1))
    axes = []
    for a in aggregate_axis:
        if not -d <= a <= d or a % (d + 1) == 0:
            raise ValueError(
                f"{where}(aggregate_axis={aggregate_axis}): axis {a} is not a "
                f"spatial axis of inputs {shape} (channels first: axis 0 is the "
                f"channel axis, 1..{d} are spatial)."
            )
        axes.append(a % (d + 1))
    if len(set(axes)) != len(axes):
        raise ValueError(
            f"{where}(aggregate_axis={aggregate_axis}) names an axis twice."
        )
    return tuple(sorted(axes))
