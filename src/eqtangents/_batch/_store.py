"""Where the tiles of a batched kernel go: device memory, host memory, or
NumPy memmap files that survive an interrupted computation."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._tiles import Grid, Leaf, writes

_DONE = "tiles_done.npy"
_META = "meta.json"
SYNC_SECONDS = 2.0  # how often the memmap files are flushed to disk


class Store:
    """The whole output arrays, filled tile by tile."""

    def __init__(self, leaves: list[Leaf], grid: Grid):
        self.leaves = leaves
        self.grid = grid
        self.arrays = {leaf.name: self._allocate(leaf) for leaf in leaves}

    def _allocate(self, leaf: Leaf):
        return np.empty(leaf.shape, leaf.dtype)

    def is_done(self, i: int, j: int) -> bool:
        return False

    def write(self, i: int, j: int, tile: dict) -> None:
        """Writes tile `(i, j)`, given as `{name: block}` (blocks may be larger
        than the tile: padded rows and columns are cut off)."""
        first_col = i if self.grid.symmetric else 0
        for leaf in self.leaves:
            block = tile[leaf.name]
            for index, transpose in writes(leaf, self.grid, i, j, first_col):
                part = leaf.transposed(block) if transpose else block
                sizes = tuple(s.stop - s.start for s in index)
                part = part[tuple(slice(0, n) for n in sizes)]
                self._put(leaf.name, index, part)
        self._mark_done(i, j)

    def _put(self, name: str, index: tuple[slice, ...], block) -> None:
        self.arrays[name][index] = np.asarray(block)

    def _mark_done(self, i: int, j: int) -> None:
        pass

    def close(self) -> None:
        """Called when every tile is written."""


class DeviceStore(Store):
    """Keeps the output on the default device; each tile is written in place."""

    def _allocate(self, leaf: Leaf):
        return jax.device_put(jnp.zeros(leaf.shape, leaf.dtype), jax.local_devices()[0])

    def _put(self, name, index, block) -> None:
        starts = tuple(s.start for s in index)
        block = jax.device_put(block, jax.local_devices()[0])
        self.arrays[name] = _put_in_place(self.arrays[name], block, starts)


@functools.partial(jax.jit, donate_argnums=0)
def _put_in_place(array: jax.Array, block: jax.Array, starts: tuple) -> jax.Array:
    starts = tuple(starts) + (0,) * (array.ndim - len(starts))
    return jax.lax.dynamic_update_slice(array, block.astype(array.dtype), starts)


class MemmapStore(Store):
    """One `.npy` memmap per output array in the directory `path`, and a record
    of the finished tiles, so that a restarted computation skips them.

    The directory also holds `meta.json`, which describes the computation; a
    directory holding another computation is refused rather than mixed."""

    def __init__(self, leaves, grid, path, where: str, create: bool = True):
        self.path = Path(path)
        self.where = where
        meta = _meta(leaves, grid)
        meta_file = self.path / _META
        if meta_file.exists():
            found = json.loads(meta_file.read_text())
            if found != meta:
                raise ValueError(
                    f"{where}: `out={str(path)!r}` holds the tiles of another "
                    f"computation ({_difference(found, meta)}); remove the "
                    "directory or choose another one to start afresh."
                )
            self.resumed = True
        elif create:
            self.path.mkdir(parents=True, exist_ok=True)
            for leaf in leaves:
                np.lib.format.open_memmap(
                    self._file(leaf.name), "w+", leaf.dtype, leaf.shape
                ).flush()
            np.lib.format.open_memmap(
                self.path / _DONE, "w+", np.bool_, grid.shape
            ).flush()
            _write_atomically(meta_file, json.dumps(meta, indent=1))
            self.resumed = False
        else:
            raise FileNotFoundError(f"{where}: `out={str(path)!r}` was not created.")
        self.done = np.load(self.path / _DONE, mmap_mode="r+")
        self.pending: list[tuple[int, int]] = []
        self.synced = time.monotonic()
        super().__init__(leaves, grid)

    def _file(self, name: str) -> Path:
        return self.path / f"{_file_stem(name)}.npy"

    def _allocate(self, leaf: Leaf):
        """An open file and where the array's data start in it. Tiles are
        written with `os.pwrite`, one contiguous run of each row at a time, so
        that nothing is mapped and resident memory stays at a tile's size
        however large the kernel is."""
        offset = np.load(self._file(leaf.name), mmap_mode="r").offset
        return os.open(self._file(leaf.name), os.O_RDWR), offset

    def _put(self, name, index, block) -> None:
        leaf = next(leaf for leaf in self.leaves if leaf.name == name)
        fd, offset = self.arrays[name]
        block = np.ascontiguousarray(block, leaf.dtype)
        item = leaf.dtype.itemsize
        row = math.prod(leaf.shape[1:]) * item  # bytes per row of the whole array
        rows = index[0]
        if len(index) == 1:  # whole rows: one contiguous run
            os.pwrite(fd, block.tobytes(), offset + rows.start * row)
            return
        cols = index[1]
        per_col = math.prod(leaf.shape[2:]) * item
        start = offset + rows.start * row + cols.start * per_col
        for k in range(rows.stop - rows.start):
            os.pwrite(fd, block[k].tobytes(), start + k * row)

    def is_done(self, i: int, j: int) -> bool:
        return bool(self.done[i, j])

    def _mark_done(self, i: int, j: int) -> None:
        self.pending.append((i, j))
        if time.monotonic() - self.synced > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Flushes the written tiles to disk, then records them as done: the
        record never names a tile whose data could be lost (a killed process
        or a crashed machine loses at most `SYNC_SECONDS` of tiles)."""
        for fd, _ in self.arrays.values():
            os.fsync(fd)
        for i, j in self.pending:
            self.done[i, j] = True
        self.done.flush()
        self.pending.clear()
        self.synced = time.monotonic()

    def close(self) -> None:
        self.sync()
        for fd, _ in self.arrays.values():
            os.close(fd)
        self.arrays = {}

    def read_only(self) -> dict:
        return {
            leaf.name: np.load(self._file(leaf.name), mmap_mode="r")
            for leaf in self.leaves
        }


def _file_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return stem or "kernel"


def _meta(leaves: list[Leaf], grid: Grid) -> dict:
    return {
        "n1": grid.n1,
        "n2": grid.n2,
        "batch_size": grid.batch_size,
        "symmetric": grid.symmetric,
        "arrays": {
            _file_stem(leaf.name): {"shape": list(leaf.shape), "dtype": leaf.dtype.str}
            for leaf in leaves
        },
    }


def _difference(found: dict, meta: dict) -> str:
    keys = [key for key in meta if found.get(key) != meta[key]]
    return ", ".join(f"{key}: {found.get(key)} there, {meta[key]} now" for key in keys)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
