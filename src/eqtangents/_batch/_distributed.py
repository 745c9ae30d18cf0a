"""Sharing the tiles between the processes of `jax.distributed`.

Process `p` of `P` computes tiles `p, p + P, p + 2P, ...` of the grid (row by
row) on its own devices. With `out=` every process writes its tiles into the
same memmap files; otherwise the tiles are exchanged with
`multihost_utils.process_allgather` (JAX's collectives: Gloo on CPUs, NCCL on
GPUs) and assembled where `gather` asks.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from ._store import DeviceStore, MemmapStore, Store
from ._tiles import Grid, Leaf


def evaluate(compute, grid: Grid, leaves: list[Leaf], options, where: str, bar):
    count, me = jax.process_count(), jax.process_index()
    tiles = grid.tiles()
    mine = tiles[me::count]
    if options.out is not None:
        return _to_files(compute, grid, leaves, options, where, bar, mine)
    names = {leaf.name for leaf in leaves}
    computed = {}
    with bar(options.progress if me == 0 else False, len(mine), 0) as progress:
        for tile, out in compute(mine):  # diagonal tiles first
            computed[tile] = {name: np.asarray(out[name]) for name in names}
            progress.update(1)
    blocks = [computed[tile] for tile in mine]
    per_process = math.ceil(len(tiles) / count)
    stacked = {
        leaf.name: _stacked(
            [b[leaf.name] for b in blocks], per_process, _padded_shape(leaf, grid), leaf
        )
        for leaf in leaves
    }
    gathered = multihost_utils.process_allgather(stacked)
    if options.gather != "all" and options.gather != me:
        return None
    store = (
        DeviceStore(leaves, grid) if options.store_on_device else Store(leaves, grid)
    )
    for process in range(count):
        for k, (i, j) in enumerate(tiles[process::count]):
            store.write(i, j, {name: g[process, k] for name, g in gathered.items()})
    return store.arrays


def _to_files(compute, grid, leaves, options, where, bar, mine):
    me = jax.process_index()
    store = MemmapStore(leaves, grid, options.out, where) if me == 0 else None
    multihost_utils.sync_global_devices(f"{where}: files of {options.out} created")
    if store is None:
        store = MemmapStore(leaves, grid, options.out, where, create=False)
    todo = [tile for tile in mine if not store.is_done(*tile)]
    try:
        with bar(
            options.progress if me == 0 else False, len(mine), len(mine) - len(todo)
        ) as progress:
            for (i, j), out in compute(todo):
                store.write(i, j, out)
                progress.update(1)
    finally:
        store.close()
    multihost_utils.sync_global_devices(f"{where}: tiles of {options.out} written")
    return store.read_only()


def _padded_shape(leaf: Leaf, grid: Grid) -> tuple[int, ...]:
    size = grid.batch_size
    if leaf.role == "pair":
        rows, cols = min(size, grid.n1), min(size, grid.n2)
        return (rows, cols) + leaf.shape[2:]
    n = grid.n1 if leaf.role == "row" else grid.n2
    return (min(size, n),) + leaf.shape[1:]


def _stacked(blocks, count: int, shape, leaf: Leaf) -> np.ndarray:
    """The blocks of one process, with empty blocks up to `count` so that every
    process sends arrays of one shape."""
    out = np.zeros((count,) + shape, leaf.dtype)
    for k, block in enumerate(blocks):
        out[k] = block
    return out
