r"""The covariance algebra of `GlobalSelfAttention`.

Attention acts on all positions at once, so its rules work on covariances whose
spatial axes are flattened into one axis of $L = \prod_j S_j$ positions:
`(B..., L, L')` with `B` the one or two batch axes. `flatten_positions` and
`unflatten_positions` convert to and from the interleaved layout of a `Kernel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._kernel import Kernel
from .._mask import own_layout, side2

MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")
POS_EMB_TYPES = ("NONE", "SUM", "CONCAT")


def mechanism_fn(name: str) -> Callable[[Array], Array]:
    """The map applied to the logits; the softmax runs over the key positions."""
    if name == "SOFTMAX":
        return lambda g: jax.nn.softmax(g, axis=-1)
    if name == "IDENTITY":
        return lambda g: g
    if name == "ABS":
        return jnp.abs
    return lambda g: jnp.maximum(g, 0)


def flatten_positions(cov: Array, batch_ndim: int) -> Array:
    """`(B..., S_1, S_1', ..., S_d, S_d')` -> `(B..., L, L')`."""
    b = batch_ndim
    d = (cov.ndim - b) // 2
    order = list(range(b)) + [b + 2 * i for i in range(d)]
    order += [b + 2 * i + 1 for i in range(d)]
    size = math.prod(cov.shape[b::2])
    return jnp.transpose(cov, order).reshape(cov.shape[:b] + (size, size))


def unflatten_positions(mat: Array, batch_ndim: int, spatial: tuple[int, ...]) -> Array:
    """`(B..., L, L')` -> `(B..., S_1, S_1', ..., S_d, S_d')`."""
    b, d = batch_ndim, len(spatial)
    z = mat.reshape(mat.shape[:b] + spatial + spatial)
    order = list(range(b)) + [a for i in range(d) for a in (b + i, b + d + i)]
    return jnp.transpose(z, order)


def pos_emb_covariance(
    spatial: tuple[int, ...],
    p_norm: float,
    decay_fn: Callable | None,
    dtype,
) -> Float[Array, "L L"]:
    r"""Covariance $R$ of the positional embeddings between flattened positions.

    The identity without `decay_fn`; otherwise
    $R[s, s'] = \mathrm{decay}(\sum_j |s_j - s'_j|^p)$.
    """
    size = math.prod(spatial)
    if decay_fn is None:
        return jnp.eye(size, dtype=dtype)
    coords = np.indices(spatial).reshape(len(spatial), -1).astype(np.float64)
    dist = np.abs(coords[:, :, None] - coords[:, None, :])
    dist = jnp.asarray(dist, dtype=dtype)
    return jnp.asarray(decay_fn(jnp.sum(dist**p_norm, axis=0)), dtype=dtype)


def sandwich(g1: Array, mat: Array, g2: Array | None) -> Array:
    """`g1 @ mat @ g2^T` per example: with `g2=None`, `mat` is `(N, L, L')` and
    both sides use `g1`; otherwise `mat` is `(N1, N2, L, L')`."""
    if g2 is None:
        return jnp.einsum("nsp,npq,ntq->nst", g1, mat, g1)
    return jnp.einsum("asp,abpq,btq->abst", g1, mat, g2)


def total(a: Array, b: Array) -> Array:
    """$\\sum_{s, s'} a[..., s, s'] b[..., s, s']$, keeping the two summed axes."""
    return jnp.sum(a * b, axis=(-2, -1), keepdims=True)


class Covariances:
    """The four covariances of a kernel, flattened, with the positional-embedding
    mixture applied on demand.

    `interp(which, ntk=False)` is the covariance of the inputs the keys see,
    $w_x K + w_R R$ (the NTK uses its own weight $w_R$), and `values(which)` that
    of the inputs the values see (the same with `val_pos_emb`, else $K$). `R` is
    one `(L, L)` matrix, or a dict of them per covariance (masked embeddings:
    zero wherever a masked position enters).
    """

    def __init__(self, flat: dict, R, w_in, w_pe, w_pe_ntk, val_pos_emb: bool):
        self.flat = flat
        self.R, self.w_in, self.w_pe, self.w_pe_ntk = R, w_in, w_pe, w_pe_ntk
        self.val_pos_emb = val_pos_emb

    def interp(self, which: str) -> Array | None:
        mat = self.flat[which]
        if mat is None or self.R is None:
            return mat
        w_pe = self.w_pe_ntk if which == "ntk" else self.w_pe
        R = self.R[which] if isinstance(self.R, dict) else self.R
        return self.w_in * mat + w_pe * R

    def values(self, which: str) -> Array | None:
        return self.interp(which) if self.val_pos_emb else self.flat[which]


def mask_keys(logits: Array, mask: Array | None, mechanism: str) -> Array:
    """Logits `(..., L_query, L_key)` that give masked keys (`mask` broadcastable
    against `(..., L_key)`) no weight: a huge negative logit for the softmax,
    zero for the other mechanisms (as in Neural Tangents)."""
    if mask is None:
        return logits
    mask = jnp.expand_dims(mask, -2)
    if mechanism == "SOFTMAX":
        fill = jnp.asarray(jnp.finfo(logits.dtype).min, logits.dtype)
    else:
        fill = jnp.zeros((), logits.dtype)
    return jnp.where(mask, fill, logits)


def linear_scaling_rule(
    cv: Covariances, qk, mechanism: str, has_ntk: bool, masks=(None, None)
) -> dict:
    r"""Attention weights and values sandwiches for tied keys and queries.

    Returns `G K_v G^T` for each covariance (`"nngp"`, `"cov1"`, `"cov2"`) and
    `G \Theta_v G^T` for `"ntk"`; the caller scales and shifts them. `masks`
    are the key masks `(N, L)` of the two batches (or `None`).
    """
    fn = mechanism_fn(mechanism)
    g1 = fn(mask_keys(qk * cv.interp("cov1"), masks[0], mechanism))
    has_cov2 = cv.flat["cov2"] is not None
    if has_cov2:
        g2 = fn(mask_keys(qk * cv.interp("cov2"), masks[1], mechanism))
    else:
        g2 = g1
    out = {
        "nngp": sandwich(g1, cv.values("nngp"), g2),
        "cov1": sandwich(g1, cv.values("cov1"), None),
        "cov2": sandwich(g2, cv.values("cov2"), None) if has_cov2 else None,
    }
    out["ntk"] = sandwich(g1, cv.values("ntk"), g2) if has_ntk else None
    return out


def identity_rule(cv: Covariances, has_ntk: bool) -> dict:
    r"""Products of the $1/\sqrt{n}$-scaled identity attention, before scaling.

    `"nngp"`: $M = K_x \langle K_x, K_v\rangle$ (and likewise `"cov1"`,
    `"cov2"`); `"ntk"`: the NTK carried through from the inputs,
    $(\langle\Theta_x, K_v\rangle + \langle K_x, \Theta_v\rangle) K_x
    + \langle K_x, K_v\rangle \Theta_x$.
    """

    def product(which):
        if cv.flat[which] is None:
            return None
        kx = cv.interp(which)
        return total(kx, cv.values(which)) * kx

    out = {which: product(which) for which in ("nngp", "cov1", "cov2")}
    out["ntk"] = None
    if has_ntk:
        kx, kv = cv.interp("nngp"), cv.values("nngp")
        tx, tv = cv.interp("ntk"), cv.values("ntk")
        out["ntk"] = (total(tx, kv) + total(kx, tv)) * kx + total(kx, kv) * tx
    return out


def masked_embeddings(k: Kernel, R):
    """The key masks `(N, L)` of both batches, and the embeddings' covariance
    per kernel entry with every pair involving a masked position zeroed
    (`(None, None)` and `R` itself without masks)."""
    if k.mask1 is None and side2(k) is None:
        return (None, None), R
    n1 = k.cov1.shape[0]
    size = math.prod(k.shape1[1:])
    m1 = k.mask1
    m2 = side2(k)
    m1 = jnp.zeros((n1, size), bool) if m1 is None else m1.reshape(n1, size)
    if m2 is None:
        m2 = jnp.zeros((k.var2.shape[0], size), bool)
    else:
        m2 = m2.reshape(m2.shape[0], size)
    if R is None:
        return (m1, m2), None

    def zero(mask):
        return jnp.where(mask, jnp.zeros((), R.dtype), R)

    cross = m1[:, None, :, None] | m2[None, :, None, :]
    R = {
        "nngp": zero(cross),
        "ntk": zero(cross),
        "cov1": zero(own_layout(m1, False)),
        "cov2": None if k.cov2 is None else zero(own_layout(m2, False)),
    }
    return (m1, m2), R
