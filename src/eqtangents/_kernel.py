"""The `Kernel`: covariances propagated through an infinitely wide network.

Layout. For inputs of per-example shape `(C, S_1, ..., S_d)` (channels first),
the covariances are laid out as

- full spatial covariance (`diagonal_spatial=False`):
  `nngp`, `ntk` have shape `(N1, N2, S_1, S_1', ..., S_d, S_d')` (the two copies
  of each spatial axis are interleaved), `cov1` has shape
  `(N1, S_1, S_1', ..., S_d, S_d')` and `cov2` `(N2, S_1, S_1', ...)`;
- spatial diagonal only (`diagonal_spatial=True`):
  `nngp`, `ntk` have shape `(N1, N2, S_1, ..., S_d)`, `cov1` `(N1, S_1, ..., S_d)`.

`cov1[n]` is the covariance of example `n` of `x1` with itself (the batch
diagonal), so `cov1` never holds an `N1 x N1` block. `cov2` is `None` when the
kernel was requested with `x2=None`, in which case `cov1` serves both sides.

Channels are the infinite dimension: every covariance is the average over
channels, `nngp[n1, n2, s, s'] = E[f(x1_n1)_{c, s} f(x2_n2)_{c, s'}]`.
"""

from __future__ import annotations

import collections

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Shaped

_KINDS = ("nngp", "ntk")
Get = None | str | tuple[str, ...]
"""`None`, "nngp", "ntk", or a tuple of those names."""


class Kernel(eqx.Module):
    """Covariances of a network's outputs at two batches of inputs.

    **Fields:**

    - `nngp`: the NNGP covariance between the two batches.
    - `ntk`: the NTK between the two batches, or `None` when it is not tracked.
    - `cov1`: per-example covariance of `x1` with itself (batch diagonal).
    - `cov2`: per-example covariance of `x2` with itself, `None` if `x2 is x1`.
    - `shape1`, `shape2`: per-example output shapes `(C, *spatial)` at this point
      of the network (channels may be any width; they stand for infinity).
    - `diagonal_spatial`: whether only the spatial diagonal is stored.
    - `is_gaussian`: whether the outputs at this point are Gaussian (true after
      an affine layer, false after a nonlinearity or at the inputs).
    - `is_input`: whether no layer has been applied yet.
    - `diagonal_batch`: whether only the kernel of each example with itself is
      stored (`model.kernel(x, diagonal_batch=True)`): `nngp` and `ntk` then
      have the layout of `cov1`, without the `N2` axis.
    - `mask1`, `mask2`: optional boolean masks of padded positions,
      `(N, *spatial)`; `True` marks a position to ignore. Every covariance
      entry that involves a masked position is zero (`kernel(...,
      mask_constant=c)`; see `docs/masking.md`). `mask2` is `None` when `x2`
      is `x1`.
    - `pattern1`, `pattern2`: optional graph adjacencies of the examples of
      each batch (dense or edge lists), read by `et.Aggregate`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))   # (N, C, H, W)
    >>> k = et.Serial(et.Conv(8, (3, 3)), et.Relu()).kernel(x, None)
    >>> k.nngp.shape                                 # (N1, N2, H, H, W, W)
    (2, 2, 6, 6, 6, 6)
    >>> k.cov1.shape, k.cov2 is None                 # each example with itself
    ((2, 6, 6, 6, 6), True)
    >>> k.shape1, k.is_gaussian
    ((8, 6, 6), False)
    >>> model = et.Serial(et.Conv(8, (3, 3)), et.Relu())
    >>> model.kernel(x, None, diagonal_spatial=True).nngp.shape
    (2, 2, 6, 6)
    ```
    """

    nngp: Float[Array, "n1 *n2_s"]
    ntk: Float[Array, "n1 *n2_s"] | None
    cov1: Float[Array, "n1 *s1"]
    cov2: Float[Array, "n2 *s1"] | None
    shape1: tuple[int, ...] = eqx.field(static=True)
    shape2: tuple[int, ...] = eqx.field(static=True)
    diagonal_spatial: bool = eqx.field(static=True)
    is_gaussian: bool = eqx.field(static=True)
    is_input: bool = eqx.field(static=True)
    mask1: Bool[Array, "n1 *spatial"] | None = None
    mask2: Bool[Array, "n2 *spatial"] | None = None
    pattern1: Shaped[Array, "n1 ..."] | None = None
    pattern2: Shaped[Array, "n2 ..."] | None = None
    diagonal_batch: bool = eqx.field(default=False, static=True)

    @property
    def n_spatial(self) -> int:
        """Number of spatial dimensions `d`."""
        return len(self.shape1) - 1

    @property
    def x1_is_x2(self) -> bool:
        """Whether the kernel was built with `x2=None`."""
        return self.cov2 is None

    @property
    def var2(self) -> Float[Array, "n2 *s1"]:
        """The covariance of the second batch (`cov1` when `x2` is `x1`)."""
        return self.cov1 if self.cov2 is None else self.cov2

    def replace(self, **changes) -> Kernel:
        """A copy with some fields changed (like `dataclasses.replace`)."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields.update(changes)
        return Kernel(**fields)

    def map_covariances(self, fn, *, ntk_fn=None) -> Kernel:
        """Applies `fn(array, batch_ndim)` to `nngp`, `cov1`, `cov2` (and `ntk_fn`,
        by default `fn`, to `ntk`). `batch_ndim` is 2 for `nngp`/`ntk`, 1 for covs."""
        ntk_fn = fn if ntk_fn is None else ntk_fn
        return self.replace(
            nngp=fn(self.nngp, 2),
            ntk=None if self.ntk is None else ntk_fn(self.ntk, 2),
            cov1=fn(self.cov1, 1),
            cov2=None if self.cov2 is None else fn(self.cov2, 1),
        )

    # ------------------------------------------------------------------ diagonals

    def diagonal_of_cov(self, cov: Float[Array, "n *s1"]) -> Float[Array, "n *d"]:
        """The spatial diagonal `cov[n, s, s]` of a per-example covariance."""
        if self.diagonal_spatial:
            return cov
        return spatial_diagonal(cov, batch_ndim=1)

    def variances(
        self,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """Variances of `x1` and `x2` broadcastable against `nngp`.

        Returns `(var1, var2)` such that `var1 * var2` has the layout of `nngp`:
        `var1[n1, s] ` sits on the unprimed axes and `var2[n2, s']` on the
        primed ones.
        """
        v1 = self.diagonal_of_cov(self.cov1)
        v2 = self.diagonal_of_cov(self.var2)
        return outer_layout(v1, v2, self.diagonal_spatial)

    def cov_variances(
        self, cov: Float[Array, "n *s1"]
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """Variances broadcastable against a per-example covariance `cov`."""
        v = self.diagonal_of_cov(cov)
        if self.diagonal_spatial:
            return v, v
        n = v.shape[0]
        left = v.reshape((n,) + sum(((s, 1) for s in v.shape[1:]), ()))
        right = v.reshape((n,) + sum(((1, s) for s in v.shape[1:]), ()))
        return left, right


def spatial_diagonal(x: Array, batch_ndim: int) -> Array:
    """Takes the diagonal of each interleaved pair of spatial axes."""
    d = (x.ndim - batch_ndim) // 2
    for i in range(d):
        x = jnp.diagonal(x, axis1=batch_ndim + i, axis2=batch_ndim + i + 1)
        # jnp.diagonal moves the diagonal to the end; rotate it back in place.
        x = jnp.moveaxis(x, -1, batch_ndim + i)
    return x


def outer_layout(
    v1: Shaped[Array, "n1 *d"], v2: Shaped[Array, "n2 *d"], diagonal_spatial: bool
) -> tuple[Array, Array]:
    """Reshapes per-position variances (or masks) to broadcast in the `nngp`
    layout."""
    n1, n2 = v1.shape[0], v2.shape[0]
    spatial = v1.shape[1:]
    if diagonal_spatial:
        return (
            v1.reshape((n1, 1) + spatial),
            v2.reshape((1, n2) + spatial),
        )
    s1 = sum(((s, 1) for s in spatial), ())
    s2 = sum(((1, s) for s in v2.shape[1:]), ())
    return v1.reshape((n1, 1) + s1), v2.reshape((1, n2) + s2)


def input_covariance(
    x1: Float[Array, "n1 c *spatial"],
    x2: Float[Array, "n2 c *spatial"],
    diagonal_spatial: bool,
    batch_diagonal: bool,
) -> Array:
    """Average over channels of products of inputs, in the kernel layout.

    With `batch_diagonal`, `x1 is x2` and only `(n, n)` pairs are returned.
    """
    d = x1.ndim - 2
    letters = "abcdefghijklm"[:d]
    primed = "nopqrstuvwxyz"[:d]
    c = x1.shape[1]
    if diagonal_spatial:
        lhs, rhs = "NC" + letters, "MC" + letters
        out = ("N" if batch_diagonal else "NM") + letters
        if batch_diagonal:
            rhs = "NC" + letters
    else:
        lhs, rhs = "NC" + letters, "MC" + primed
        pairs = "".join(a + b for a, b in zip(letters, primed))
        out = ("N" if batch_diagonal else "NM") + pairs
        if batch_diagonal:
            rhs = "NC" + primed
    return jnp.einsum(f"{lhs},{rhs}->{out}", x1, x2) / c


def kernel_from_inputs(
    x1: Float[Array, "n1 c *spatial"],
    x2: Float[Array, "n2 c *spatial"] | None,
    *,
    diagonal_spatial: bool,
    compute_ntk: bool,
) -> Kernel:
    """The kernel of the inputs themselves: `x1 x2^T / C` in the kernel layout."""
    x1_is_x2 = x2 is None
    x2_ = x1 if x2 is None else x2
    nngp = input_covariance(x1, x2_, diagonal_spatial, batch_diagonal=False)
    cov1 = input_covariance(x1, x1, diagonal_spatial, batch_diagonal=True)
    cov2 = None
    if not x1_is_x2:
        cov2 = input_covariance(x2_, x2_, diagonal_spatial, batch_diagonal=True)
    return Kernel(
        nngp=nngp,
        ntk=jnp.zeros_like(nngp) if compute_ntk else None,
        cov1=cov1,
        cov2=cov2,
        shape1=tuple(x1.shape[1:]),
        shape2=tuple(x2_.shape[1:]),
        diagonal_spatial=diagonal_spatial,
        is_gaussian=False,
        is_input=True,
    )


def parse_get(get: Get) -> tuple[tuple[str, ...], bool]:
    """Validates `get`; returns the names asked for and whether one was a string."""
    if get is None:
        return _KINDS, False
    if isinstance(get, str):
        names, single = (get,), True
    else:
        names, single = tuple(get), False
    for name in names:
        if name not in _KINDS:
            raise ValueError(
                f"Unknown kernel {name!r} in `get={get!r}`: choose from "
                f"{_KINDS} (a string, a tuple of them, or None for an `et.Kernel`)."
            )
    return names, single


def select(k: Kernel | tuple, get: Get):
    """Returns what `get` asks for: the `Kernel`, one array, or a named tuple
    (for a multi-output network, a tuple of these, one per branch)."""
    if get is None:
        return k
    if isinstance(k, tuple):
        return tuple(select(branch, get) for branch in k)
    names, single = parse_get(get)
    if single:
        return getattr(k, names[0])
    if len(set(names)) != len(names):
        raise ValueError(f"`get={get!r}` names a kernel twice.")
    return _NAMED_TUPLES[names](*(getattr(k, name) for name in names))


_NAMED_TUPLES = {
    names: collections.namedtuple("Kernels", names)
    for names in [("nngp",), ("ntk",), ("nngp", "ntk"), ("ntk", "nngp")]
}
