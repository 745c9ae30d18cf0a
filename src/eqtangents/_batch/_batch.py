"""Tiled evaluation of kernel functions: `et.batch`."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import _distributed
from ._sharded import ShardedTiles
from ._store import DeviceStore, MemmapStore, Store
from ._tiles import Grid, contains_kernel, layout, named_leaves

_WHERE = "et.batch"


def batch(
    kernel_fn: Callable,
    batch_size: int,
    *,
    store_on_device: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
    symmetry: str | None = "auto",  # "auto", "pairs", "batch" or None
    gather: str | int = "all",  # "all" or a process index
) -> Callable:
    r"""`kernel_fn` evaluated over tiles of `batch_size` x `batch_size` examples.

    The returned function takes the arguments of `kernel_fn`,
    `(x1, x2=None, *args, **kwargs)`, and returns what `kernel_fn(x1, x2, ...)`
    returns (an `et.Kernel`, an array, a named tuple of arrays, ...), computed
    one tile of the $N_1 \times N_2$ grid at a time, so that device memory holds
    one tile's computation. Any kernel function whose outputs start with the
    batch axes works: `model.kernel`, `et.empirical_kernel` and its variants,
    `et.monte_carlo_kernel`, or a function of your own that JAX can trace.
    Sizes need not divide `batch_size`. Each entry of a kernel depends on its
    two examples only, so the tiles are exactly the blocks of the direct
    computation.

    With `x2=None` the kernel is symmetric and only the tiles on and above the
    diagonal are computed (diagonal tiles as `kernel_fn(x_i, None)`); the tiles
    below are their transposes (see `symmetry`).

    **Arguments:**

    - `kernel_fn`: `kernel_fn(x1, x2, *args, **kwargs)`; `x1`, `x2` are arrays
      (or pytrees of arrays) with the examples on the leading axis.
    - `batch_size`: examples per tile side.
    - `store_on_device`: keep the result on the default device (each tile is
      written in place); `False` moves each tile to host memory as soon as it
      is computed and returns NumPy arrays.
    - `mesh`: a `jax.sharding.Mesh`; the tiles are spread over all its
      devices, one tile per device at a time (`shard_map`).
    - `out`: a directory. The result is written tile by tile to one NumPy
      memmap `.npy` file per array (`nngp.npy`, `ntk.npy`, `kernel.npy`, ...),
      so it may exceed memory, and the function returns read-only memmaps. A
      record of the finished tiles is kept, and calling again with the same
      `out` resumes an interrupted computation, skipping them.
    - `progress`: a progress bar over the tiles; `None` shows one when standard
      error is a terminal and there is more than one tile.
    - `symmetry`: how a tile below the diagonal follows from the one above when
      `x2=None`. `"auto"` swaps the batch axes, and the interleaved spatial
      pairs of an `et.Kernel` with full spatial covariances; for arrays with
      axes after `(N1, N2)`, whose layout it cannot know, it computes every
      tile. `"pairs"`: those axes come in pairs, one per input (the `(O, O)`
      of an empirical NTK, `model.kernel(..., get="nngp")` of a network with
      spatial outputs); `"batch"`: they belong to the pair of examples as a
      whole (`diagonal_spatial=True`). `None`: compute every tile.
    - `gather`: under `jax.distributed` with several processes, each process
      computes its share of the tiles; `"all"` returns the whole kernel on
      every process, a process index returns it there only (`None`
      elsewhere). With `out` every process writes its tiles to the same files
      (on a file system they share) and all return the memmaps.

    **Returns:** the batched kernel function.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (8, 4))
    >>> model = et.Serial(et.Dense(512), et.Relu(), et.Dense(1))
    >>> kernel_fn = et.batch(model.kernel, batch_size=4)      # 2 x 2 tiles of 4 x 4
    >>> ntk = kernel_fn(x, None, "ntk")
    >>> bool(jnp.allclose(ntk, model.kernel(x, None, "ntk")))
    True
    ```
    """
    if not callable(kernel_fn):
        raise ValueError(f"{_WHERE}: `kernel_fn` must be callable, got {kernel_fn!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(
            f"{_WHERE}: `batch_size` must be a positive int, got {batch_size!r}."
        )
    if batch_size <= 0:
        raise ValueError(
            f"{_WHERE}: `batch_size` must be a positive int, got {batch_size}."
        )
    if symmetry not in ("auto", "pairs", "batch", None):
        raise ValueError(
            f"{_WHERE}: `symmetry={symmetry!r}`; choose 'auto', 'pairs', 'batch' "
            "or None."
        )
    if gather != "all" and not (
        isinstance(gather, int | np.integer) and 0 <= gather < jax.process_count()
    ):
        raise ValueError(
            f"{_WHERE}: `gather={gather!r}`; give 'all' or a process index from 0 "
            f"to {jax.process_count() - 1}."
        )
    options = _Options(
        int(batch_size), store_on_device, mesh, out, progress, symmetry, gather
    )

    @functools.wraps(kernel_fn)
    def batched(x1, x2=None, *args, **kwargs):
        return _evaluate(kernel_fn, options, x1, x2, args, kwargs)

    return batched


@dataclasses.dataclass(frozen=True)
class _Options:
    batch_size: int
    store_on_device: bool
    mesh: jax.sharding.Mesh | None
    out: str | Path | None
    progress: bool | None
    symmetry: str | None
    gather: str | int


def _evaluate(kernel_fn, options: _Options, x1, x2, args, kwargs):
    from .._kernel import Kernel

    if isinstance(x1, Kernel):
        raise ValueError(
            f"{_WHERE}: `x1` is an `et.Kernel`; batched functions take the inputs "
            "themselves, `(N1, ...)` arrays."
        )
    n1 = _examples(x1, "x1")
    n2 = n1 if x2 is None else _examples(x2, "x2")
    size = options.batch_size

    def tile_fn(a, b):
        return kernel_fn(a, b, *args, **kwargs)

    first = _take(x1, slice(0, min(size, n1)))
    second = None if x2 is None else _take(x2, slice(0, min(size, n2)))
    try:
        abstract = jax.eval_shape(tile_fn, first, second)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        raise ValueError(
            f"{_WHERE}: `kernel_fn` could not be traced by JAX; `et.batch` needs a "
            "kernel function built from JAX operations (as every eqtangents "
            "kernel function is)."
        ) from None
    grid, leaves = _plan(abstract, options.symmetry, n1, n2, size, x2 is None)
    if contains_kernel(abstract) and (
        options.out is not None or not options.store_on_device
    ):
        raise ValueError(
            f"{_WHERE}: with `out=` or `store_on_device=False` the result is held "
            "in NumPy arrays, which an `et.Kernel` cannot hold; ask for arrays, "
            "e.g. `get=('nngp', 'ntk')`."
        )
    inputs = _Inputs(x1, x2, size)
    compute = ShardedTiles(kernel_fn, args, kwargs, inputs, grid, options.mesh, _WHERE)
    if jax.process_count() > 1:
        result = _distributed.evaluate(compute, grid, leaves, options, _WHERE, _bar)
        return None if result is None else _assemble(abstract, result)
    store = _store(leaves, grid, options)
    todo = [tile for tile in grid.tiles() if not store.is_done(*tile)]
    total = len(grid.tiles())
    try:
        with _bar(options.progress, total, total - len(todo)) as bar:
            for (i, j), blocks in compute(todo):
                store.write(i, j, blocks)
                bar.update(1)
    finally:  # an interrupted memmap computation keeps the tiles it wrote
        store.close()
    arrays = store.read_only() if isinstance(store, MemmapStore) else store.arrays
    return _assemble(abstract, arrays)


def _plan(abstract, symmetry, n1, n2, size, x2_is_none):
    """The tile grid, and the layout of the output."""
    plain = [
        (name, value)
        for name, value, _, _, in_kernel in named_leaves(abstract)
        if not in_kernel
    ]
    triangle = x2_is_none and symmetry is not None
    if triangle and symmetry == "auto":
        triangle = all(len(value.shape) == 2 for _, value in plain)
    grid = Grid(n1, n2, size, symmetric=triangle)
    leaves = layout(abstract, grid, _WHERE)
    if triangle and symmetry == "pairs":
        plain_names = {name for name, _ in plain}
        for k, leaf in enumerate(leaves):
            if leaf.name in plain_names:
                tail = leaf.shape[2:]
                if len(tail) % 2 or any(a != b for a, b in zip(tail[::2], tail[1::2])):
                    name = leaf.name or "the output"
                    raise ValueError(
                        f"{_WHERE}: `symmetry='pairs'`, but `{name}` has trailing "
                        f"axes {tail}, which are not pairs of equal sizes; use "
                        "`symmetry='batch'` or None."
                    )
                leaves[k] = dataclasses.replace(leaf, swap_pairs=True)
    return grid, leaves


def _store(leaves, grid, options: _Options) -> Store:
    if options.out is not None:
        return MemmapStore(leaves, grid, options.out, _WHERE)
    if options.store_on_device:
        return DeviceStore(leaves, grid)
    return Store(leaves, grid)


def _assemble(abstract, arrays: dict):
    """The output of the direct computation, built from the whole arrays."""
    from .._kernel import Kernel

    def rebuild(path, node):
        prefix = jax.tree_util.keystr(path)
        if isinstance(node, Kernel):
            changes = {
                field: arrays[f"{prefix}.{field}"]
                for field in ("nngp", "ntk", "cov1", "cov2", "mask1", "mask2")
                if getattr(node, field) is not None
            }
            if node.pattern1 is not None or node.pattern2 is not None:
                changes.update(pattern1=None, pattern2=None)
            return node.replace(**changes)
        return arrays[prefix]

    return jax.tree_util.tree_map_with_path(
        rebuild, abstract, is_leaf=lambda x: isinstance(x, Kernel)
    )


class _Inputs:
    """The two batches, sliced into tiles padded to `batch_size` examples (or
    all of them, if fewer) by repeating the last one, so that every tile has
    one shape."""

    def __init__(self, x1, x2, size: int):
        self.x1, self.x2, self.size = x1, x2, size

    def tile(self, grid: Grid, i: int, j: int):
        a = _take(self.x1, grid.rows(i), min(self.size, grid.n1))
        if self.x2 is None and i == j:
            return a, None
        x2 = self.x1 if self.x2 is None else self.x2
        return a, _take(x2, grid.cols(j), min(self.size, grid.n2))


def _take(x, rows: slice, pad_to: int | None = None):
    """Rows of every array of `x`; host arrays (NumPy, memmaps) stay on the host
    and JAX arrays (also traced ones, under `jit` or `grad`) stay JAX arrays."""

    def one(a):
        xp = jnp if isinstance(a, jax.Array) else np
        part = a[rows]
        if pad_to is not None and part.shape[0] < pad_to:
            repeats = xp.repeat(part[-1:], pad_to - part.shape[0], axis=0)
            part = xp.concatenate([xp.asarray(part), repeats])
        return part

    return jax.tree.map(one, x)


def _examples(x, name: str) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError(f"{_WHERE}: `{name}` holds no arrays.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{_WHERE}: every array of `{name}` must have the examples on its "
            f"leading axis, and the same number of them; got shapes "
            f"{[np.shape(leaf) for leaf in leaves]}."
        )
    (n,) = sizes
    if n == 0:
        raise ValueError(f"{_WHERE}: `{name}` has no examples.")
    return int(n)


def _bar(progress: bool | None, total: int, initial: int):
    if progress is None:
        progress = total > 1 and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        disable=not progress,
        unit="tile",
        desc=_WHERE,
    )
