"""Guards of `model.kernel`: non-finite inputs and outputs, memory, layout.

Each guard raises a `ValueError` that names the layer, the argument and the
fix. On concrete arrays the checks run in Python; on traced ones (under
`jit`, `vmap`, `grad`) the output check is compiled in with
`equinox.error_if`, so a NaN or an overflow never comes back silently.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# Arrays alive at once while a layer maps (nngp, ntk) to their successors:
# both inputs, both outputs and one temporary of the same size.
_LIVE_COPIES = 3


def is_traced(tree) -> bool:
    """Whether any leaf of `tree` is a tracer (inside `jit`, `vmap`, `grad`)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def check_finite_inputs(name: str, which: str, x, mask_constant) -> None:
    """Refuse NaN or infinite inputs, except entries equal to `mask_constant`."""
    for i, a in enumerate(x if isinstance(x, tuple) else (x,)):
        if isinstance(a, jax.core.Tracer):
            continue
        a = np.asarray(a)
        bad = ~np.isfinite(a)
        if mask_constant is not None:
            c = np.asarray(mask_constant)
            bad &= ~((a == c) | (np.isnan(c) & np.isnan(a)))
        if bad.any():
            where = f"`{which}`" if not isinstance(x, tuple) else f"`{which}[{i}]`"
            example = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"{name}.kernel: {where} has {int(bad.sum())} NaN or infinite "
                f"entries (the first in example {example}), and the kernel of such "
                "an input is NaN. Clean the inputs; if a constant marks padding, "
                "pass it as `mask_constant=` (NaN works) so that those entries "
                "are masked."
            )


def _overflow_message(name: str) -> str:
    return (
        f"{name}.kernel: the kernel has NaN or infinite entries. The inputs (and "
        "hyperparameters) must be finite; if they are, a variance overflowed: "
        "deep networks in the chaotic phase (large `W_std`) grow their NTK "
        "geometrically with depth, `Exp`, `Gaussian(b > 0)` and `Sin` with large "
        "`b` grow exponentially with the variance. Use float64 "
        '(`jax.config.update("jax_enable_x64", True)`), a smaller `W_std` or '
        "fewer layers."
    )


def check_finite_output(name: str, result):
    """`result` (arrays or a named tuple of them), checked to be finite."""
    message = _overflow_message(name)
    leaves = [a for a in jax.tree.leaves(result) if isinstance(a, jax.Array)]
    if not is_traced(leaves):
        for a in leaves:
            if jnp.issubdtype(a.dtype, jnp.inexact) and not bool(
                jnp.all(jnp.isfinite(a))
            ):
                raise ValueError(message)
        return result

    def guard(a):
        if not isinstance(a, jax.Array) or not jnp.issubdtype(a.dtype, jnp.inexact):
            return a
        return eqx.error_if(a, ~jnp.all(jnp.isfinite(a)), message)

    return jax.tree.map(guard, result)


@functools.cache
def available_memory() -> tuple[int, str]:
    """Bytes of memory of the default device, and the device's name."""
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, RuntimeError, NotImplementedError):
        stats = None  # not reported (CPU) or not queryable here
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), device.device_kind
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: do not guess
        total = 2**63
    return int(total), "the host"


def check_memory(
    name: str, shape, n1: int, n2: int, full_spatial, compute_ntk: bool, dtype
) -> None:
    """Refuse a kernel whose covariances cannot fit in memory, before computing.

    The estimate is the size of the input-layout covariances (the largest for
    networks whose spatial sizes do not grow) times the copies alive in one
    layer; it suggests the `batch_size` whose tiles fit in a quarter of it.
    """
    shapes = shape if shape and isinstance(shape[0], tuple) else (shape,)
    fulls = full_spatial if isinstance(full_spatial, tuple) else (full_spatial,)
    per_pair = sum(
        math.prod(s[1:]) ** (2 if full else 1)
        for s, full in zip(shapes, fulls, strict=True)
    )
    itemsize = jnp.dtype(dtype).itemsize
    kernels = 2 if compute_ntk else 1
    per_pair_bytes = per_pair * itemsize * kernels * _LIVE_COPIES
    needed = n1 * n2 * per_pair_bytes
    limit, device = available_memory()
    if needed <= limit:
        return
    tile = max(1, 2 ** int(math.log2(max(1.0, math.sqrt(limit / 4 / per_pair_bytes)))))
    spatial_hint = (
        ", or `diagonal_spatial=True` if the spatial diagonal is enough"
        if any(fulls) and any(len(s) > 1 for s in shapes)
        else ""
    )
    raise ValueError(
        f"{name}.kernel: the kernel of {n1} x {n2} examples needs about "
        f"{needed / 1e9:.3g} GB ({per_pair} covariance entries per pair of "
        f"examples), more than the {limit / 1e9:.3g} GB of {device}. Compute it in "
        f"tiles: `model.kernel(x1, x2, batch_size={tile})` (or `et.batch`, which "
        f"can also write the result to disk with `out=`){spatial_hint}."
    )


def warn_if_channels_last(name: str, shape) -> None:
    """Warn about an `(H, W, C)` image passed where `(C, H, W)` is expected."""
    if len(shape) == 3 and shape[2] in (1, 3) and shape[0] == shape[1] >= 8:
        warnings.warn(
            f"{name}.kernel: the inputs have per-example shape {shape}, read as "
            f"{shape[0]} channels of {shape[1]} x {shape[2]} images. If they are "
            "(N, H, W, C) images, as Neural Tangents and TensorFlow lay them out, "
            "move the channels first: `jnp.moveaxis(x, -1, 1)`.",
            stacklevel=3,
        )
