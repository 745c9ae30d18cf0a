"""Computing tiles one at a time, or one per device of a `Mesh` at a time."""

from __future__ import annotations

from collections.abc import Iterator

import equinox as eqx
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
    programs. The programs are compiled with `eqx.filter_jit` on the kernel
    function and its arguments, so calling a batched function again reuses
    them."""

    def __init__(self, kernel_fn, args, kwargs, inputs, grid: Grid, mesh, where):
        self.call = (kernel_fn, args, kwargs)
        self.inputs = inputs
        self.grid = grid
        self.devices = None if mesh is None else _local_devices(mesh, where)

    @property
    def width(self) -> int:
        """Tiles per round."""
        return 1 if self.devices is None else len(self.devices)

    def __call__(self, tiles) -> Iterator[tuple[tuple, dict]]:
        diagonal = [t for t in tiles if self._is_diagonal(*t)]
        others = [t for t in tiles if not self._is_diagonal(*t)]
        for group in (diagonal, others):
            for start in range(0, len(group), self.width):
                yield from self._round(group[start : start + self.width])

    def _is_diagonal(self, i: int, j: int) -> bool:
        return self.inputs.x2 is None and i == j

    def _round(self, tiles):
        filled = tiles + [tiles[-1]] * (self.width - len(tiles))
        pairs = [self.inputs.tile(self.grid, i, j) for i, j in filled]
        stacked = (_stack([p[0] for p in pairs]),)
        if pairs[0][1] is not None:
            stacked += (_stack([p[1] for p in pairs]),)
        if self.devices is None:
            out = _on_one_device(*self.call, stacked)
        else:
            mesh = Mesh(np.array(self.devices), (_AXIS,))
            sharding = NamedSharding(mesh, PartitionSpec(_AXIS))
            stacked = jax.tree.map(lambda x: jax.device_put(x, sharding), stacked)
            out = _on_devices(*self.call, stacked, mesh)
        out = _blocks(out)
        for k, tile in enumerate(tiles):
            yield tile, {name: block[k] for name, block in out.items()}


def _each(kernel_fn, args, kwargs):
    """The kernel function of each tile of a stack (of one tile per device)."""

    def local(a, b=None):
        out = kernel_fn(_first(a), _first(b), *args, **kwargs)
        return jax.tree.map(lambda y: y[None], out)

    return local


@eqx.filter_jit
def _on_one_device(kernel_fn, args, kwargs, stacked):
    return _each(kernel_fn, args, kwargs)(*stacked)


@eqx.filter_jit
def _on_devices(kernel_fn, args, kwargs, stacked, mesh):
    spec = PartitionSpec(_AXIS)
    per_device = _per_device(
        _each(kernel_fn, args, kwargs), mesh, (spec,) * len(stacked), spec
    )
    return per_device(*stacked)


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
