r"""Channelwise linear maps of the spatial axes: `ImageResize`, `Index` (and
`DotGeneral`, in `dot_general.py`).

Each of these layers applies one fixed linear map $T$ to the spatial axes of
every channel, $y_c = T x_c$, so Gaussian inputs stay Gaussian and the kernel
is $T$ applied to both positions of each covariance,

$$K'[p, p'] = \sum_{q, q'} T[p, q]\, T[p', q']\, K[q, q'].$$

`spatial_linear` computes this for any such $T$ given as a function on arrays
`(M, *spatial)`: it applies the function first to the unprimed and then to the
primed spatial axes of a covariance, folding every other axis into `M`.

Axes are per example and channels first, `(C, *spatial)`: axis 0 is the
channel axis and spatial axis `i` of Neural Tangents' batch layout
`(N, *spatial, C)` is axis `i` here as well, so `ImageResize(shape=[-1, h, w,
-1])` in Neural Tangents is `ImageResize(shape=(-1, h, w))` here, `Index` drops
the batch entry of Neural Tangents' `idx` and moves its channel entry to the
front, and `DotGeneral` dimension numbers name the same spatial axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import EllipsisType

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Layout, Shape, as_shape

SpatialFn = Callable[[Array], Array]


# ---------------------------------------------------------------- kernel rule


def _both_sides(cov: Array, batch_ndim: int, fn: SpatialFn) -> Array:
    """`fn` on the unprimed and on the primed spatial axes of a full covariance
    `(B..., S_1, S_1', ..., S_d, S_d')`; returns `(B..., P_1, P_1', ...)`."""
    b = batch_ndim
    d = (cov.ndim - b) // 2
    unzip = list(range(b)) + [b + 2 * i for i in range(d)]
    unzip += [b + 2 * i + 1 for i in range(d)]
    z = jnp.transpose(cov, unzip)  # (B, S, S')
    batch, s, s_primed = z.shape[:b], z.shape[b : b + d], z.shape[b + d :]
    z = jnp.moveaxis(z, tuple(range(b + d, b + 2 * d)), tuple(range(d)))
    z = fn(z.reshape((-1,) + s))  # (S' B, P)
    p = z.shape[1:]
    z = z.reshape(s_primed + batch + p)
    z = jnp.moveaxis(z, tuple(range(d)), tuple(range(z.ndim - d, z.ndim)))
    z = fn(z.reshape((-1,) + s_primed))  # (B P, P')
    z = z.reshape(batch + p + z.shape[1:])
    k = len(p)
    zip_ = list(range(b)) + [a for i in range(k) for a in (b + i, b + k + i)]
    return jnp.transpose(z, zip_)


def _one_side(cov: Array, batch_ndim: int, fn: SpatialFn) -> Array:
    """`fn` on the spatial axes of a diagonal covariance `(B..., S_1, ..., S_d)`."""
    batch, s = cov.shape[:batch_ndim], cov.shape[batch_ndim:]
    z = fn(cov.reshape((-1,) + s))
    return z.reshape(batch + z.shape[1:])


def spatial_linear(
    layer: AbstractLayer,
    k: Kernel,
    fn: SpatialFn,
    fn_diagonal: SpatialFn | None,
    shape1: Shape,
    shape2: Shape,
) -> Kernel:
    r"""Kernel of $y_c = T x_c$ for a channelwise linear map $T$ of the spatial axes.

    **Arguments:**

    - `layer`: the layer (for error messages).
    - `k`: the input kernel.
    - `fn`: applies $T$ to an array `(M, *spatial)`, slice by slice.
    - `fn_diagonal`: maps the spatial diagonal of a covariance to the spatial
      diagonal of its image, or `None` when the diagonal alone does not
      determine it (the layer then needs full spatial covariances).
    - `shape1`, `shape2`: the per-example output shapes.

    **Returns:**

    The output kernel. A flat input gives a full-layout output (the two layouts
    of a flat kernel coincide); a flat output uses the layout of flat inputs.
    """
    if k.n_spatial == 0:
        diagonal = False
    elif k.diagonal_spatial:
        if fn_diagonal is None:
            raise ValueError(
                f"{type(layer).__name__} mixes spatial positions, so it needs full "
                "spatial covariances, but its input kernel holds only their "
                "diagonal. Compute the kernel from the inputs with "
                "`model.kernel(x1, x2)` (the layout is chosen for the whole "
                "network), not from a kernel built with `diagonal_spatial=True`."
            )
        diagonal = True
    else:
        diagonal = False

    def apply(cov, batch_ndim):
        if diagonal:
            return _one_side(cov, batch_ndim, fn_diagonal)
        return _both_sides(cov, batch_ndim, fn)

    return k.replace(
        nngp=apply(k.nngp, 2),
        ntk=None if k.ntk is None else apply(k.ntk, 2),
        cov1=apply(k.cov1, 1),
        cov2=None if k.cov2 is None else apply(k.cov2, 1),
        shape1=shape1,
        shape2=shape2,
        diagonal_spatial=diagonal or len(shape1) == 1,
    )


def spatial_input(layer: AbstractLayer, input_shape) -> Shape:
    """Validates one per-example input shape `(C, *spatial)`."""
    shape = as_shape(input_shape, layer)
    if len(shape) < 1:
        raise ValueError(
            f"{type(layer).__name__} expects inputs `(C, *spatial)`, got per-example "
            f"shape {shape}."
        )
    return shape


# ---------------------------------------------------------------- ImageResize

_KERNEL_METHODS = (jax.image.ResizeMethod.LINEAR, jax.image.ResizeMethod.NEAREST)


class ImageResize(AbstractLayer):
    r"""Resizes the spatial axes of one example, as `jax.image.resize` does.

    Every channel is resized by the same linear interpolation $R$ (a matrix per
    spatial axis), so $K' = R K R^\top$ on both positions of each covariance.
    With `"nearest"` each output reads one input position, so the spatial
    diagonal of the covariance suffices; `"linear"` mixes neighbours and needs
    full spatial covariances.

    **Arguments:**

    - `shape`: the per-example output shape `(C, *spatial)`, channels first;
      `-1` keeps an axis as it is. The channel entry must be `-1` for kernels
      (the channels are infinitely many). Neural Tangents' batch-layout
      `shape=[-1, h, w, -1]` is `shape=(-1, h, w)` here.
    - `method`: any `jax.image.resize` method for the forward pass; kernels
      support `"linear"` (also `"bilinear"`, `"trilinear"`, `"triangle"`) and
      `"nearest"`.
    - `antialias`: use an antialiasing filter when downsampling (linear).
    - `precision`: `jax.lax` precision of the interpolation.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4))
    >>> up = et.Serial(et.ImageResize((-1, 8, 8), "nearest"), et.Flatten())
    >>> flat = et.Flatten().kernel(x, None, "nngp")
    >>> bool(jnp.allclose(up.kernel(x, None, "nngp"), flat))
    True
    >>> et.ImageResize((-1, 8, 8), "linear").output_shape((3, 4, 4))
    (3, 8, 8)
    ```
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    method: str | jax.image.ResizeMethod = eqx.field(static=True)
    antialias: bool = eqx.field(static=True)
    precision: jax.lax.Precision | None = eqx.field(static=True)

    def __init__(
        self,
        shape: Sequence[int],
        method: str | jax.image.ResizeMethod,
        antialias: bool = True,
        precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST,
    ):
        shape = tuple(shape)
        if not all(
            isinstance(s, (int, np.integer))
            and not isinstance(s, bool)
            and (s > 0 or s == -1)
            for s in shape
        ):
            raise ValueError(
                f"ImageResize: `shape` must hold positive sizes or -1 (keep the "
                f"axis), one per axis of an example `(C, *spatial)`; got {shape!r}."
            )
        if isinstance(method, str):
            jax.image.ResizeMethod.from_string(method)  # raises on unknown names
        self.shape = tuple(int(s) for s in shape)
        self.method = method
        self.antialias = bool(antialias)
        self.precision = precision

    @property
    def _method(self) -> jax.image.ResizeMethod:
        if isinstance(self.method, str):
            return jax.image.ResizeMethod.from_string(self.method)
        return self.method

    def _resolve(self, input_shape) -> Shape:
        shape = spatial_input(self, input_shape)
        if len(self.shape) != len(shape):
            raise ValueError(
                f"ImageResize(shape={self.shape}) has {len(self.shape)} entries but "
                f"its input {shape} has {len(shape)} axes. Give one entry per axis "
                "of an example `(C, *spatial)` (channels first, no batch axis), "
                "with -1 for the axes to keep."
            )
        return tuple(s if t == -1 else t for s, t in zip(shape, self.shape))

    def output_shape(self, input_shape: Shape) -> Shape:
        return self._resolve(input_shape)

    def _resize(self, z: Array, spatial: Shape, method) -> Array:
        return jax.image.resize(
            z,
            z.shape[:1] + tuple(spatial),
            method=method,
            antialias=self.antialias,
            precision=self.precision,
        )

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c_out *spatial_out"]:
        out = self._resolve(x.shape)
        return jax.image.resize(
            x, out, method=self.method, antialias=self.antialias,
            precision=self.precision,
        )  # fmt: skip

    def output_mask(self, mask: Array, input_shape: Shape) -> Array:
        raise ValueError(
            "ImageResize does not support masks (`mask_constant`): interpolation "
            "mixes padded and unpadded positions. Remove `mask_constant`, or "
            "resize the inputs before masking them."
        )

    def _resizes_space(self) -> bool:
        return any(s != -1 for s in self.shape[1:])

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        if self._resizes_space() and self._method != jax.image.ResizeMethod.NEAREST:
            return True
        return output_full

    def propagate(self, k: Kernel) -> Kernel:
        shape1, shape2 = self._resolve(k.shape1), self._resolve(k.shape2)
        method = self._method
        if method not in _KERNEL_METHODS:
            raise ValueError(
                f"ImageResize(method={self.method!r}) has no kernel: kernels support "
                "'linear' and 'nearest'. Use one of them, or "
                "`et.monte_carlo_kernel` for this method."
            )
        if self.shape[0] != -1:
            raise ValueError(
                f"ImageResize(shape={self.shape}) resizes the channel axis, which is "
                "infinitely wide in the kernel; set the channel entry `shape[0]` "
                "to -1."
            )

        def fn(z):
            return self._resize(z, shape1[1:], method)

        diagonal_ok = method == jax.image.ResizeMethod.NEAREST
        diagonal_ok = diagonal_ok or not self._resizes_space()
        return spatial_linear(self, k, fn, fn if diagonal_ok else None, shape1, shape2)


# ---------------------------------------------------------------------- Index

IndexItem = int | slice | EllipsisType


def _check_idx(idx) -> tuple:
    items = idx if isinstance(idx, tuple) else (idx,)
    out = []
    for item in items:
        if item is Ellipsis:
            out.append(item)
        elif isinstance(item, slice):
            parts = (item.start, item.stop, item.step)
            if not all(p is None or isinstance(p, (int, np.integer)) for p in parts):
                raise ValueError(f"Index: slice {item!r} must have integer bounds.")
            out.append(slice(*(None if p is None else int(p) for p in parts)))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            out.append(int(item))
        else:
            raise ValueError(
                f"Index: `idx` may hold integers, slices and one `...`, got "
                f"{item!r}. Index arrays and `None` (new axes) are not supported."
            )
    if sum(item is Ellipsis for item in out) > 1:
        raise ValueError(f"Index: `idx={idx!r}` holds more than one `...`.")
    return tuple(out)


class Index(AbstractLayer):
    r"""Indexes one example, `x[idx]`, with integers, slices and `...`.

    Axes are per example and channels first: `idx[0]` indexes the channels and
    `idx[i]` spatial axis `i`; there is no batch axis (Neural Tangents'
    `idx=(b, h, w, c)` on `(N, H, W, C)` is `idx=(c, h, w)` here, without `b`).
    An integer removes its spatial axis. Selecting positions keeps Gaussian
    inputs Gaussian, and the kernel is the same selection on both positions,
    $K'[p, p'] = K[\iota(p), \iota(p')]$, so the spatial diagonal suffices when
    only the diagonal is needed.

    In the forward pass any index works; kernels need the channel entry to be
    `:` (the channels are infinitely many), and an integer there is refused
    everywhere since it would remove the channel axis.

    **Arguments:**

    - `idx`: an index, e.g. `(slice(None), slice(1, 5), 0)` for `x[:, 1:5, 0]`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 4))      # (N, C, L)
    >>> first_two = et.Serial(et.Index((slice(None), slice(0, 2))), et.Flatten())
    >>> flat = x[:, :, :2].reshape(2, -1)
    >>> bool(jnp.allclose(first_two.kernel(x, None, "nngp"), flat @ flat.T / 6))
    True
    >>> et.Index((slice(None), 0)).output_shape((3, 4))        # an int drops the axis
    (3,)
    ```
    """

    idx: tuple[IndexItem, ...] = eqx.field(static=True)

    def __init__(self, idx: IndexItem | tuple[IndexItem, ...]):
        self.idx = _check_idx(idx)

    def _canonical(self, ndim: int) -> tuple:
        idx = self.idx
        if Ellipsis in idx:
            at = idx.index(Ellipsis)
            fill = ndim - (len(idx) - 1)
            idx = idx[:at] + (slice(None),) * max(fill, 0) + idx[at + 1 :]
        if len(idx) > ndim:
            raise ValueError(
                f"Index(idx={self.idx!r}) indexes {len(idx)} axes, but an example "
                f"has only {ndim} (`(C, *spatial)`, channels first, no batch axis)."
            )
        return idx + (slice(None),) * (ndim - len(idx))

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = spatial_input(self, input_shape)
        idx = self._canonical(len(shape))
        if isinstance(idx[0], int):
            raise ValueError(
                f"Index(idx={self.idx!r}) indexes the channel axis (axis 0) with an "
                "integer, which removes it; keep it with a slice such as `0:1`."
            )
        for axis, (item, size) in enumerate(zip(idx, shape)):
            if isinstance(item, int) and not -size <= item < size:
                raise ValueError(
                    f"Index(idx={self.idx!r}): index {item} is out of range for "
                    f"axis {axis} of size {size} (input {shape})."
                )
        out = jax.eval_shape(lambda: jnp.zeros(shape)[idx]).shape
        if 0 in out:
            raise ValueError(
                f"Index(idx={self.idx!r}) selects nothing from an input of shape "
                f"{shape} (output {out})."
            )
        return out

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c_out *spatial_out"]:
        self.output_shape(tuple(x.shape))
        return x[self._canonical(x.ndim)]

    def output_mask(self, mask: Array, input_shape: Shape) -> Array:
        """The same selection of positions (`mask_constant`)."""
        return mask[self._canonical(len(input_shape))[1:]]

    def propagate(self, k: Kernel) -> Kernel:
        shape1, shape2 = self.output_shape(k.shape1), self.output_shape(k.shape2)
        idx = self._canonical(len(k.shape1))
        if idx[0] != slice(None):
            raise ValueError(
                f"Index(idx={self.idx!r}) selects channels, but in the kernel the "
                "channels are infinitely many; index spatial axes only and keep "
                "`:` for axis 0."
            )
        spatial = (slice(None),) + idx[1:]

        def fn(z):
            return z[spatial]

        return spatial_linear(self, k, fn, fn, shape1, shape2)
