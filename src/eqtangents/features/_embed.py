"""Embedding a large data set in batches: `embed`."""

from __future__ import annotations

import functools
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float
from tqdm.auto import tqdm

from ._features import AbstractFeatureLayer, Features


def embed(
    fmodel: AbstractFeatureLayer,
    x: Float[ArrayLike, "n c *spatial"],
    *,
    pattern: Float[ArrayLike, "n v v"] | None = None,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> Features:
    r"""The features of every input of `x`, computed `batch_size` at a time.

    A feature model maps each example independently, so a data set of any
    size is embedded in batches: the inputs stay on the host (a NumPy array or
    memmap is fine) and each batch of features is written in place into the
    output, so memory holds the output, one batch and nothing else. The last
    batch is the last `batch_size` inputs (overlapping the one before), so one
    compiled function serves all batches.

    **Arguments:**

    - `fmodel`: an initialised feature model (random features or sketches; an
      exact layer's features depend on the whole batch and cannot be split).
    - `x`: inputs `(N, C, *spatial)`, channels first.
    - `pattern`: graph adjacencies `(N, V, V)` for `features.Aggregate`.
    - `batch_size`: inputs per batch.
    - `progress`: show a progress bar; `None` shows one when standard error is a
      terminal and there is more than one batch.

    **Returns:** the `Features` of all `N` inputs.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(et.features.Dense(), et.features.Relu(
    ...     nngp_dim=64, sketch_dim=64)).init(jax.random.key(1), x.shape[1:])
    >>> f = et.features.embed(fmodel, np.asarray(x), batch_size=2)   # 2 at a time
    >>> whole = fmodel(et.features.Features.from_inputs(x))          # all at once
    >>> bool(jnp.allclose(f.ntk_feat, whole.ntk_feat, atol=1e-6))
    True
    ```
    """
    if not isinstance(fmodel, AbstractFeatureLayer):
        raise ValueError(
            f"features.embed: `fmodel` is a {type(fmodel).__name__}, not a feature "
            "layer; build one with the layers of `et.features` (or "
            "`et.features.from_network`) and `init` it."
        )
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"features.embed: `batch_size` must be a positive int, got {batch_size!r}."
        )
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim < 2:
        raise ValueError(
            f"features.embed: `x` has shape {x.shape}; give a batch `(N, C, *spatial)`."
        )
    shape = fmodel.output_shape(tuple(x.shape[1:]))
    if shape.nngp is None or shape.ntk is None:
        raise ValueError(
            "features.embed: the model has an exact layer (`method='exact'`), "
            "whose features depend on the whole batch; embed with one call, "
            "`fmodel(Features.from_inputs(x))`, or use random features."
        )
    if pattern is not None:
        pattern = np.asarray(pattern)
        if pattern.shape[0] != x.shape[0]:
            raise ValueError(
                f"features.embed: `pattern` has {pattern.shape[0]} graphs for "
                f"{x.shape[0]} inputs; give one per input."
            )
    n = x.shape[0]
    size = min(batch_size, n)
    starts = range(0, n, size)
    if progress is None:
        progress = len(starts) > 1 and sys.stderr.isatty()
    # NumPy's float64 becomes float32 unless JAX has x64 enabled, as in jnp.asarray.
    dtype = jax.dtypes.canonicalize_dtype(
        x.dtype if np.issubdtype(x.dtype, np.inexact) else float
    )
    spatial = tuple(shape.spatial)
    nngp = jnp.zeros((n, *spatial, shape.nngp), dtype)
    ntk = jnp.zeros((n, *spatial, shape.ntk), dtype)
    bar = tqdm(total=n, disable=not progress, unit="input", desc="features.embed")
    for start in starts:
        stop = min(start + size, n)
        first = stop - size
        chunk = jnp.asarray(x[first:stop], dtype)
        chunk_pattern = None if pattern is None else jnp.asarray(pattern[first:stop])
        f = _embed_batch(fmodel, chunk, chunk_pattern)
        nngp, ntk = _write(nngp, ntk, f.nngp_feat, f.ntk_feat, first)
        bar.update(stop - start)
    bar.close()
    pattern = None if pattern is None else jnp.asarray(pattern, dtype)
    return Features(nngp, ntk, pattern)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _write(nngp: Array, ntk: Array, nngp_block: Array, ntk_block: Array, start):
    """`nngp` and `ntk` with the blocks written from row `start`, in place."""
    return (
        jax.lax.dynamic_update_slice_in_dim(nngp, nngp_block, start, 0),
        jax.lax.dynamic_update_slice_in_dim(ntk, ntk_block, start, 0),
    )


@eqx.filter_jit
def _embed_batch(fmodel, x: Array, pattern) -> Features:
    return fmodel(Features.from_inputs(x, pattern))
