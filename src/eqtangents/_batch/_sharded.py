"""Computing tiles one at a time, or one per device of a `Mesh` at a time."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._tiles import Grid, named_leaves

try:  # jax >= 0.6
    from jax import shard_map as _shard_map
except ImportError:  # pragma: no cover
    from jax.experimental.shard_map import shard_map as _shard_map

_AXIS = "tiles"


class ShardedTiles:
    """`compute(tiles)` yields `((i, j), {name: block})` for each tile.

    Every tile is padded to `batch_size` examples a side (by repeating its
    last example; the padding is cut off when the tile is stored), so that all
    tiles run one compiled program, whatever the mode: XLA orders the sums of
    its reductions by array shape, and one shape makes the tiled, sharded,
    multi-process and memmapped results the same numbers. Without a mesh the
    tiles run one after the other; with a mesh they go to its devices in
    rounds, one per device, stacked and split with `shard_map`. Diagonal tiles
    of a symmetric kernel (`kernel_fn(x_i, None)`) and the others are two
    programs."""

    def __init__(self, tile_fn, inputs, grid: Grid, mesh: Mesh | None, where: str):
        self.tile_fn = tile_fn
        self.inputs = inputs
        self.grid = grid
        self.where = where
        self.devices = None if mesh is None else _local_devices(mesh, where)
        self._programs: dict[bool, object] = {}

    @property
    def width(self) -> int:
        """Tiles per round."""
        return 1 if self.devices is None else len(self.devices)

    def __call__(self, tiles) -> Iterator[tuple[tuple, dict]]:
        diagonal = [t for t in tiles if self._is_diagonal(*t)]
        others = [t for t in tiles if not self._is_diagonal(*t)]
        for group, is_diagonal in ((diagonal, True), (others, False)):
            for start in range(0, len(group), self.width):
                yield from self._round(group[start : start + self.width], is_diagonal)

    def _is_diagonal(self, i: int, j: int) -> bool:
        return self.inputs.x2 is None and i == j

    def _round(self, tiles, is_diagonal: bool):
        filled = tiles + [tiles[-1]] * (self.width - len(tiles))
        pairs = [self.inputs.tile(self.grid, i, j) for i, j in filled]
        a = _stack([p[0] for p in pairs])
        b = None if is_diagonal else _stack([p[1] for p in pairs])
        args = (a,) if b is None else (a, b)
        if self.devices is not None:
            args = self._placed(*args)
        out = self._program(is_diagonal)(*args)
        out = _blocks(out)
        for k, tile in enumerate(tiles):
            yield tile, {name: block[k] for name, block in out.items()}

    def _placed(self, *args):
        sharding = NamedSharding(self._mesh, PartitionSpec(_AXIS))
        return jax.tree.map(lambda x: jax.device_put(x, sharding), args)

    @property
    def _mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (_AXIS,))

    def _program(self, is_diagonal: bool):
        if is_diagonal not in self._programs:
            tile_fn = self.tile_fn

            def local(a, b=None):
                out = tile_fn(_first(a), _first(b))
                return jax.tree.map(lambda y: y[None], out)

            # One program per kind of tile, the same on one device or many: a
            # stack of tiles in, the kernel function of each tile inside.
            if self.devices is None:
                program = local
            else:
                spec = PartitionSpec(_AXIS)
                in_specs = (spec,) if is_diagonal else (spec, spec)
                program = _per_device(local, self._mesh, in_specs, spec)
            self._programs[is_diagonal] = jax.jit(program)
        return self._programs[is_diagonal]


def _per_device(fn, mesh, in_specs, out_specs):
    """`shard_map` without the replication checks: each device runs the kernel
    function on its own tile (which may differentiate the model, as the
    empirical NTK does, where the checks get in the way)."""
    try:
        return _shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
    except TypeError:  # pragma: no cover (jax < 0.6)
        return _shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False
        )


def _first(x):
    return None if x is None else jax.tree.map(lambda y: y[0], x)


def _stack(parts):
    def stack(*a):
        if any(isinstance(p, jax.Array) for p in a):
            return jnp.stack(a)
        return np.stack(a)

    return jax.tree.map(stack, *parts)


def _blocks(out) -> dict:
    return {name: value for name, value, *_ in named_leaves(out)}


def _local_devices(mesh: Mesh, where: str) -> list:
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"{where}: `mesh` must be a `jax.sharding.Mesh`, e.g. "
            "`jax.make_mesh((jax.device_count(),), ('tiles',))`; got "
            f"{type(mesh).__name__}."
        )
    process = jax.process_index()
    devices = [d for d in mesh.devices.flat if d.process_index == process]
    if not devices:
        raise ValueError(
            f"{where}: the mesh has no devices of process {process}; give a mesh "
            "over `jax.devices()`."
        )
    return devices
