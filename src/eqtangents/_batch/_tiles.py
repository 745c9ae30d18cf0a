"""The tile grid of a kernel and the roles of its output arrays.

A kernel function maps two batches `(N1, ...)`, `(N2, ...)` to a pytree of
arrays. Each array has one of three roles, which say how the tiles of the
`N1 x N2` grid assemble into the whole:

- `pair`: leading axes `(N1, N2)`, one block per tile (`Kernel.nngp`,
  `Kernel.ntk`, every array that is not inside an `et.Kernel`);
- `row`: leading axis `N1`, taken from one tile of each row (`cov1`, `mask1`);
- `col`: leading axis `N2`, taken from one tile of each column (`cov2`, ...).

When `x2` is `None` the kernel is symmetric, `K(x1, x2)[a, b] = K(x2, x1)[b, a]`,
and only the tiles on and above the diagonal are computed; the tile below is
the tile above with its batch axes swapped and, where the trailing axes come
in pairs (one per input, interleaved as in `et.Kernel`'s full spatial layout
or the `(O, O)` outputs of an empirical NTK), each pair swapped too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import jax
import numpy as np

from .._kernel import Kernel

_ROLES = {
    "nngp": "pair",
    "ntk": "pair",
    "cov1": "row",
    "mask1": "row",
    "pattern1": "row",
    "cov2": "col",
    "mask2": "col",
    "pattern2": "col",
}


@dataclasses.dataclass(frozen=True)
class Grid:
    """Tiles of `batch_size` rows and columns over `n1 x n2` examples (the last
    row and column of tiles may be shorter)."""

    n1: int
    n2: int
    batch_size: int
    symmetric: bool  # x2 is None: the tiles below the diagonal are transposes

    @property
    def shape(self) -> tuple[int, int]:
        return math.ceil(self.n1 / self.batch_size), math.ceil(
            self.n2 / self.batch_size
        )

    def rows(self, i: int) -> slice:
        return slice(i * self.batch_size, min((i + 1) * self.batch_size, self.n1))

    def cols(self, j: int) -> slice:
        return slice(j * self.batch_size, min((j + 1) * self.batch_size, self.n2))

    def tiles(self) -> list[tuple[int, int]]:
        """The tiles to compute, row by row (on and above the diagonal only when
        `symmetric`)."""
        rows, cols = self.shape
        return [
            (i, j)
            for i in range(rows)
            for j in range(cols)
            if not self.symmetric or j >= i
        ]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One array of the assembled output."""

    name: str  # its path in the output pytree, e.g. ".nngp" or "[0]"
    role: str  # "pair", "row" or "col"
    shape: tuple[int, ...]  # of the whole array
    dtype: np.dtype
    swap_pairs: bool  # whether the trailing axes of a pair leaf come in pairs
    in_kernel: bool  # a field of an `et.Kernel`, whose layout is known

    def transposed(self, tile: np.ndarray | jax.Array):
        """A `pair` tile of `K(x_a, x_b)` as the tile of `K(x_b, x_a)`."""
        extra = tile.ndim - 2
        if self.swap_pairs:
            tail = [a for k in range(extra // 2) for a in (3 + 2 * k, 2 + 2 * k)]
        else:
            tail = list(range(2, 2 + extra))
        return tile.transpose([1, 0, *tail])


def named_leaves(out) -> Iterator[tuple[str, object, str, bool, bool]]:
    """`(name, array, role, swap_pairs, in_kernel)` for every array leaf of a
    kernel function's output (arrays or `jax.ShapeDtypeStruct`s)."""
    nodes, _ = jax.tree_util.tree_flatten_with_path(
        out, is_leaf=lambda x: isinstance(x, Kernel)
    )
    for path, node in nodes:
        prefix = jax.tree_util.keystr(path)
        if isinstance(node, Kernel):
            for field, role in _ROLES.items():
                value = getattr(node, field)
                if value is not None:
                    pairs = field in ("nngp", "ntk") and not node.diagonal_spatial
                    yield f"{prefix}.{field}", value, role, pairs, True
        elif node is not None:
            yield prefix, node, "pair", False, False


def contains_kernel(out) -> bool:
    leaves = jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, Kernel))
    return any(isinstance(leaf, Kernel) for leaf in leaves)


def layout(out, grid: Grid, where: str) -> list[Leaf]:
    """The leaves of the whole output, from the (abstract) output of one tile
    of `batch_size` rows and columns."""
    leaves = []
    for name, value, role, pairs, in_kernel in named_leaves(out):
        shape = tuple(value.shape)
        lead = {"pair": 2, "row": 1, "col": 1}[role]
        if len(shape) < lead:
            raise ValueError(
                f"{where}: the kernel function returned `{name or 'its output'}` "
                f"of shape {shape}; every array it returns must start with the "
                "batch axes `(N1, N2, ...)` so that tiles can be assembled."
            )
        n_rows = min(grid.batch_size, grid.n1)
        n_cols = min(grid.batch_size, grid.n2)
        expected = {"pair": (n_rows, n_cols), "row": (n_rows,), "col": (n_cols,)}[role]
        if shape[:lead] != expected:
            raise ValueError(
                f"{where}: on a tile of {expected[0]} x {n_cols} examples the kernel "
                f"function returned `{name or 'its output'}` of shape {shape}, "
                f"which does not start with {expected}; `et.batch` tiles functions "
                "whose outputs have the batch axes first, like `model.kernel`, "
                "`et.empirical_kernel` and `et.monte_carlo_kernel`."
            )
        full = {"pair": (grid.n1, grid.n2), "row": (grid.n1,), "col": (grid.n2,)}[role]
        dtype = np.dtype(value.dtype)
        leaves.append(Leaf(name, role, full + shape[lead:], dtype, pairs, in_kernel))
    return leaves


def writes(leaf: Leaf, grid: Grid, i: int, j: int, first_col: int):
    """Where tile `(i, j)` of leaf goes: `(index, transpose)` pairs, `index`
    the slices of the whole array, `transpose` whether to swap the tile first."""
    rows, cols = grid.rows(i), grid.cols(j)
    if leaf.role == "pair":
        yield (rows, cols), False
        if grid.symmetric and i != j:
            yield (cols, rows), True
    elif leaf.role == "row" and j == first_col:
        yield (rows,), False
    elif leaf.role == "col" and i == 0:
        yield (cols,), False
