r"""Masks of padded positions (`mask_constant`), shared by all layers.

A mask marks the positions of one example that are padding: a boolean array of
the example's spatial shape, `(*spatial)`, `True` to ignore (a scalar for a
flat example; a tuple of masks for a tuple of inputs). Kernels carry the masks
of their two batches, `(N, *spatial)`, in `Kernel.mask1` and `Kernel.mask2`.

- From inputs: a position is masked when every one of its channels equals
  `mask_constant` (`NaN` matches `NaN`); every entry equal to the constant is
  replaced by zero, including single channels of unmasked positions.
- Through a layer: `layer.output_mask(mask, input_shape)` says which output
  positions are padding (the identity for layers acting on each position).
- Finite networks zero the inputs of every layer, and their outputs, at masked
  positions. Kernels do the same: after every layer each covariance entry
  that involves a masked position is set to zero (`remask`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool

from ._kernel import Kernel, outer_layout
from ._layers._spatial import output_size, pad_amounts

Mask = Bool[Array, "*spatial"]

# ------------------------------------------------------------- finite width


def from_constant(x: Array, mask_constant) -> tuple[Array, Array]:
    """One example `(C, *spatial)`: the entries equal to `mask_constant` set to
    zero, and the mask `(*spatial)` of positions where all channels equal it."""
    c = jnp.asarray(mask_constant, dtype=x.dtype)
    hit = (x == c) | (jnp.isnan(x) & jnp.isnan(c))
    return jnp.where(hit, jnp.zeros((), x.dtype), x), jnp.all(hit, axis=0)


def has_mask(mask: Any) -> bool:
    """Whether a mask (or a tuple of them) holds any array."""
    return len(jax.tree.leaves(mask)) > 0


def zero_masked(x: Any, mask: Any) -> Any:
    """`x` (one example, or a tuple) with its masked positions set to zero."""
    if not has_mask(mask):
        return x
    if isinstance(x, tuple):
        masks = mask if isinstance(mask, tuple) else (mask,) * len(x)
        return tuple(zero_masked(a, m) for a, m in zip(x, masks))
    return jnp.where(mask, jnp.zeros((), x.dtype), x)


def check_mask(name: str, mask: Any, shape: tuple[int, ...]) -> Array:
    """Validates the mask of one example of per-example shape `shape`."""
    mask = jnp.asarray(mask)
    spatial = tuple(shape[1:])
    if mask.shape == spatial:
        return mask.astype(bool)
    if mask.shape == tuple(shape) and shape[0] > 1:
        raise ValueError(
            f"{name}: got a mask of shape {mask.shape}, one entry per channel, for "
            f"an input {tuple(shape)}; masks mark positions and must be the same "
            f"for every channel, shape {spatial}. Reduce it over channels, e.g. "
            "`mask.all(axis=0)` (a position is padding when all its channels "
            "are), or pass `mask_constant=` and let the network compute it."
        )
    if mask.shape == (1,) + spatial:
        return mask[0].astype(bool)
    raise ValueError(
        f"{name}: the mask has shape {mask.shape}, but an input of shape "
        f"{tuple(shape)} (channels first) needs one entry per position, "
        f"{spatial}."
    )


def start(name: str, x: Any, keywords: dict) -> tuple[Any, Any, dict]:
    """Takes `mask_constant` and `mask` out of a combinator's call keywords.

    Returns the inputs (entries equal to the constant zeroed), their mask (or
    None) and the remaining keywords.
    """
    keywords = dict(keywords)
    constant = keywords.pop("mask_constant", None)
    mask = keywords.pop("mask", None)
    if constant is None and mask is None:
        return x, None, keywords
    x = jax.tree.map(jnp.asarray, x)
    if constant is not None:
        if mask is not None:
            raise ValueError(
                f"{name}: give `mask_constant` or `mask`, not both; the mask is "
                "computed from the constant."
            )
        if isinstance(x, tuple):
            pairs = [from_constant(a, constant) for a in x]
            return tuple(a for a, _ in pairs), tuple(m for _, m in pairs), keywords
        x, mask = from_constant(x, constant)
        return x, mask, keywords
    if mask is not None:
        if isinstance(x, tuple):
            masks = mask if isinstance(mask, tuple) else (mask,) * len(x)
            mask = tuple(
                None if m is None else check_mask(name, m, a.shape)
                for a, m in zip(x, masks)
            )
        else:
            mask = check_mask(name, mask, x.shape)
    return x, mask, keywords


def output_mask(layer, mask: Any, input_shape: Any) -> Any:
    """`layer.output_mask`, with `None` (no masks) passed through.

    A module that is not an eqtangents layer but wraps one in its field
    `layer` (as the empirical kernels' taps do) follows the wrapped layer.
    """
    if not has_mask(mask):
        return None
    while not hasattr(layer, "output_mask") and hasattr(layer, "layer"):
        layer = layer.layer
    if not hasattr(layer, "output_mask"):
        raise ValueError(
            f"{type(layer).__name__} is not an eqtangents layer, so it cannot say "
            "which of its outputs are padding; remove `mask_constant`, or make it "
            "an `et.AbstractLayer` with an `output_mask` method."
        )
    return layer.output_mask(mask, input_shape)


def with_mask(keywords: dict, mask: Any) -> dict:
    """Call keywords with the current mask added (if there is one)."""
    return {**keywords, "mask": mask} if has_mask(mask) else keywords


# ------------------------------------------------------------ window masks


def center_taps(
    mask: Array,
    windows: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    padding: str,
) -> Array:
    """The mask of a sliding-window layer: an output position is padding when
    the central tap of its window (tap `(k - 1) // 2`) is, as in Neural
    Tangents."""
    for axis, (k, s, d) in enumerate(zip(windows, strides, dilations)):
        n = mask.shape[axis]
        low, _ = pad_amounts(n, k, s, d, padding)
        index = s * np.arange(output_size(n, k, s, d, padding)) - low
        index = index + d * ((k - 1) // 2)
        index = index % n if padding == "CIRCULAR" else np.clip(index, 0, n - 1)
        mask = jnp.take(mask, jnp.asarray(index), axis=axis)
    return mask


def unmasked_counts(mask: Array | None, size: int, dtype) -> Array | float:
    """Unmasked positions per example of a batch mask `(N, *spatial)` (at least
    one, so that fully masked examples average to zero)."""
    if mask is None:
        return float(size)
    count = jnp.sum(~mask, axis=tuple(range(1, mask.ndim)))
    return jnp.maximum(count, 1).astype(dtype)


# ------------------------------------------------------------ infinite width


def side2(k: Kernel) -> Array | None:
    """The mask of the second batch (`mask1` when `x2` is `x1`)."""
    return k.mask1 if k.cov2 is None else k.mask2


def own_layout(mask: Array, diagonal_spatial: bool) -> Array:
    """A batch mask `(N, *spatial)` in the layout of `cov1`: `True` where
    either position of a pair is masked."""
    if diagonal_spatial or mask.ndim == 1:
        return mask
    n, spatial = mask.shape[0], mask.shape[1:]
    a = mask.reshape((n,) + sum(((s, 1) for s in spatial), ()))
    b = mask.reshape((n,) + sum(((1, s) for s in spatial), ()))
    return a | b


def remask(k: Kernel, mask1: Array | None, mask2: Array | None) -> Kernel:
    """Stores the masks and zeroes every covariance entry that involves a
    masked position (`mask2` is ignored when `x2` is `x1`)."""
    same = k.cov2 is None
    if mask1 is None and (same or mask2 is None):
        return k.replace(mask1=None, mask2=None)
    n1 = k.cov1.shape[0]
    n2 = n1 if same else k.cov2.shape[0]
    spatial = tuple(k.shape1[1:])
    m1 = jnp.zeros((n1,) + spatial, bool) if mask1 is None else mask1
    m2 = m1 if same else (jnp.zeros((n2,) + spatial, bool) if mask2 is None else mask2)

    def zero(cov, mask):
        return None if cov is None else jnp.where(mask, jnp.zeros((), cov.dtype), cov)

    own1 = own_layout(m1, k.diagonal_spatial)
    if k.diagonal_batch:
        cross = own1
    else:
        a, b = outer_layout(m1, m2, k.diagonal_spatial)
        cross = a | b
    return k.replace(
        nngp=zero(k.nngp, cross),
        ntk=zero(k.ntk, cross),
        cov1=zero(k.cov1, own1),
        cov2=None if same else zero(k.cov2, own_layout(m2, k.diagonal_spatial)),
        mask1=m1,
        mask2=None if same else m2,
    )


def _kernels(k) -> list[Kernel]:
    if isinstance(k, Kernel):
        return [k]
    return [leaf for item in k for leaf in _kernels(item)]


def _field(k, fn):
    if isinstance(k, Kernel):
        return fn(k)
    return tuple(_field(item, fn) for item in k)


def _check_input_masks(layer, k) -> None:
    name = type(layer).__name__
    for kk in _kernels(k):
        sizes = [(kk.mask1, kk.cov1.shape[0], kk.shape1)]
        if kk.cov2 is not None:
            sizes.append((kk.mask2, kk.cov2.shape[0], kk.shape2))
        for mask, n, shape in sizes:
            if mask is None:
                continue
            expected = (n,) + tuple(shape[1:])
            if mask.shape == expected:
                continue
            if mask.shape == (n,) + tuple(shape) and shape[0] > 1:
                raise ValueError(
                    f"{name}: the kernel's mask has shape {mask.shape}, one entry "
                    "per channel, but infinite-width layers need masks that are "
                    f"the same for every channel, shape {expected} (batch, "
                    "*spatial). Reduce it over channels, e.g. `mask.all(axis=1)` "
                    "(a position is padding when all its channels are), or pass "
                    "`mask_constant=` to `kernel` and let it compute the masks."
                )
            raise ValueError(
                f"{name}: the kernel's mask has shape {mask.shape}; its outputs of "
                f"per-example shape {tuple(shape)} need masks {expected}."
            )


def _batched(layer, masks, shapes):
    if not has_mask(masks):
        return None
    return jax.vmap(lambda m: layer.output_mask(m, shapes))(masks)


def _remask_tree(layer, out, m1, m2):
    if isinstance(out, Kernel):
        name = type(layer).__name__
        n2 = None if out.cov2 is None else out.cov2.shape[0]
        for mask, n in ((m1, out.cov1.shape[0]), (m2, n2)):
            if mask is None:
                continue
            if not isinstance(mask, Array) or (
                mask.shape[1:] != tuple(out.shape1[1:])
                or (n is not None and mask.shape[0] != n)
            ):
                got = jax.tree.map(lambda a: a.shape[1:], mask)
                raise ValueError(
                    f"{name} does not support masks (`mask_constant`): its outputs "
                    f"have spatial shape {tuple(out.shape1[1:])}, but its "
                    f"`output_mask` gives masks of per-example shape {got}. Remove "
                    "`mask_constant`, or give the layer an `output_mask` method "
                    "that maps the mask of its input positions to its outputs'."
                )
        return remask(out, m1, m2)
    n = len(out)
    m1 = (None,) * n if m1 is None else m1
    m2 = (None,) * n if m2 is None else m2
    if not (isinstance(m1, tuple) and isinstance(m2, tuple)) or (
        len(m1) != n or len(m2) != n
    ):
        raise ValueError(
            f"{type(layer).__name__} does not support masks (`mask_constant`): it "
            f"has {n} outputs, but its `output_mask` does not give one mask each."
        )
    return tuple(_remask_tree(layer, o, a, b) for o, a, b in zip(out, m1, m2))


def propagate(layer, k):
    """`layer.propagate(k)` with the masks carried along.

    Without masks this is `layer.propagate(k)`. Otherwise the output masks come
    from `layer.output_mask` (per example, vmapped over the batch), and the
    covariances of the output are zeroed wherever a masked position enters.
    """
    kernels = _kernels(k)
    if all(kk.mask1 is None and kk.mask2 is None for kk in kernels):
        return layer.propagate(k)
    _check_input_masks(layer, k)
    same = all(kk.cov2 is None for kk in kernels)
    m1 = _batched(
        layer, _field(k, lambda kk: kk.mask1), _field(k, lambda kk: kk.shape1)
    )
    m2 = None
    if not same:
        m2 = _batched(layer, _field(k, side2), _field(k, lambda kk: kk.shape2))
    return _remask_tree(layer, layer.propagate(k), m1, m2)
