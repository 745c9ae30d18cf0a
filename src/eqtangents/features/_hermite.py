r"""Hermite expansions of dual activations and sketches of all tensor powers.

With the orthonormal Hermite polynomials $h_k = \mathrm{He}_k / \sqrt{k!}$ of
the standard normal weight, an activation $\sigma$ applied to inputs of
variance $q$ has the coefficients $a_k(q) = E[\sigma(\sqrt q z)\, h_k(z)]$,
$z \sim N(0, 1)$, and by Mehler's formula two jointly Gaussian inputs with
variances $q_1, q_2$ and correlation $\rho$ give

$$E[\sigma(u)\sigma(v)] = \sum_{k \ge 0} a_k(q_1)\, a_k(q_2)\, \rho^k.$$

This module computes the $a_k(q)$ (closed forms for the ReLU family, erf,
GELU and sin; Gauss-Hermite quadrature for any other $\sigma$) and
`HermiteSketch`, random features $z_k(u)$ with
$E\langle z_k(u), z_k(v)\rangle = \langle u, v\rangle^k$ for every degree at
once.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._sketch import fwht, next_power_of_two, pad_to_power_of_two

QUADRATURE_NODES = 96
"""Nodes of the Gauss-Hermite rule for coefficients without a closed form (for
tanh, coefficients to degree 10 are accurate to 1e-11 at q = 1, 1e-7 at q = 2.5
and 1e-5 at q = 6)."""


# ------------------------------------------------------------ coefficients


def he_at_zero(j: int) -> float:
    r"""$\mathrm{He}_j(0)$: 0 for odd $j$, $(-1)^{j/2} (j - 1)!!$ for even $j$."""
    if j % 2:
        return 0.0
    return float((-1) ** (j // 2) * math.prod(range(j - 1, 0, -2)))


def _he0_over_root_factorial(j: int, k: int) -> float:
    r"""$\mathrm{He}_j(0) / \sqrt{2\pi\, k!}$, in logarithms (no overflow), with
    $(j - 1)!! = j! / (2^{j/2} (j/2)!)$ for even $j$."""
    if j % 2:
        return 0.0
    log = math.lgamma(j + 1) - j / 2 * math.log(2) - math.lgamma(j / 2 + 1)
    log -= (math.log(2 * math.pi) + math.lgamma(k + 1)) / 2
    return (-1) ** (j // 2) * math.exp(log)


def relu_coefficients(degree: int) -> np.ndarray:
    r"""$a_0..a_p$ of $\max(z, 0)$: $a_0 = 1/\sqrt{2\pi}$, $a_1 = 1/2$ and
    $a_k = \mathrm{He}_{k-2}(0) / \sqrt{2\pi\, k!}$ for $k \ge 2$ (so the odd
    ones from 3 on vanish)."""
    out = [1 / math.sqrt(2 * math.pi), 0.5]
    out += [_he0_over_root_factorial(k - 2, k) for k in range(2, degree + 1)]
    return np.asarray(out[: degree + 1])


def step_coefficients(degree: int) -> np.ndarray:
    r"""$b_0..b_p$ of the step $[z > 0]$: $b_0 = 1/2$ and
    $b_k = \mathrm{He}_{k-1}(0) / \sqrt{2\pi\, k!}$ for $k \ge 1$ (the even ones
    from 2 on vanish)."""
    out = [0.5] + [_he0_over_root_factorial(k - 1, k) for k in range(1, degree + 1)]
    return np.asarray(out)


def gaussian_moments(s: Array, degree: int) -> Array:
    r"""$E[e^{-s z^2} h_j(z)]$ for $j = 0..p$, shape `s.shape + (p + 1,)`.

    From the generating function $E[e^{-s z^2} e^{t z - t^2/2}] =
    (1 + 2s)^{-1/2} e^{-s t^2 / (1 + 2s)}$: zero for odd $j$ and, for $j = 2i$,
    $(1 + 2s)^{-1/2} \big(-\tfrac{s}{1 + 2s}\big)^i (2i)! / (i! \sqrt{(2i)!})$.
    """
    s = jnp.asarray(s)[..., None]
    j = np.arange(degree + 1)
    i = j // 2
    const = (
        np.where(
            j % 2 == 0,
            np.exp(
                [math.lgamma(2 * n + 1) / 2 - math.lgamma(n + 1) for n in i]
            ),  # (2i)! / (i! sqrt((2i)!))
            0.0,
        )
        * (-1.0) ** i
    )
    ratio = s / (1 + 2 * s)
    return (
        jnp.asarray(const, s.dtype) * ratio ** i.astype(s.dtype) / jnp.sqrt(1 + 2 * s)
    )


def shift_down(c: Array) -> Array:
    r"""From $E[g\, h_j]$, $j = 0..p+1$, to $E[z g(z)\, h_k(z)]$, $k = 0..p$, by
    $z h_k = \sqrt{k+1}\, h_{k+1} + \sqrt{k}\, h_{k-1}$."""
    p = c.shape[-1] - 2
    k = np.arange(p + 1)
    up = np.sqrt(k + 1).astype(c.dtype) * c[..., 1:]
    down = np.sqrt(k[1:]).astype(c.dtype) * c[..., :p]
    return up.at[..., 1:].add(down)


def erf_coefficients(a, b, c, q: Array, degree: int) -> tuple[Array, Array]:
    r"""Coefficients of $\sigma(x) = a\,\mathrm{erf}(bx) + c$ and of $\sigma'$ at
    variances $q$, with $\beta = b\sqrt q$: by Stein's identity
    $E[f h_k] = E[f' h_{k-1}] / \sqrt{k}$,
    $a_k = \frac{2a\beta}{\sqrt{\pi k}} E[e^{-\beta^2 z^2} h_{k-1}]$ ($k \ge 1$,
    $a_0 = c$), and $\sigma'(\sqrt q z) = \frac{2ab}{\sqrt\pi} e^{-\beta^2 z^2}$."""
    beta2 = b * b * q
    m = gaussian_moments(beta2, degree)
    k = np.arange(1, degree + 1)
    scale = 2 * a * jnp.sqrt(beta2)[..., None] / np.sqrt(np.pi * k).astype(q.dtype)
    nngp = jnp.concatenate(
        [jnp.full(q.shape + (1,), c, q.dtype), scale * m[..., :-1]], -1
    )
    return nngp, (2 * a * b / np.sqrt(np.pi)) * m


def sin_coefficients(a, b, c, q: Array, degree: int) -> tuple[Array, Array]:
    r"""Coefficients of $\sigma(x) = a \sin(bx + c)$ and of $\sigma'$: with
    $\beta = b\sqrt q$ and $E[e^{i\beta z}\mathrm{He}_k(z)] = (i\beta)^k
    e^{-\beta^2/2}$, $a_k = a \beta^k e^{-\beta^2/2} \sin(c + k\pi/2) /
    \sqrt{k!}$ and the same with $ab\cos$ for $\sigma'$."""
    k = np.arange(degree + 1)
    log_fact = np.asarray([math.lgamma(n + 1) / 2 for n in k])
    beta = b * jnp.sqrt(q)[..., None]
    base = jnp.exp(-(beta**2) / 2 - log_fact.astype(q.dtype)) * beta ** k.astype(
        q.dtype
    )
    phase = c + k * np.pi / 2
    return a * base * np.sin(phase), a * b * base * np.cos(phase)


def gelu_coefficients(q: Array, degree: int) -> tuple[Array, Array]:
    r"""Coefficients of $\sigma(x) = x\Phi(x)$ and $\sigma'(x) = \Phi(x) + x\varphi(x)$.

    With $\Phi(x) = \tfrac12 + \tfrac12\mathrm{erf}(x/\sqrt2)$,
    $\sigma(\sqrt q z) = \tfrac{\sqrt q}{2} z\,(1 + \mathrm{erf}(\beta z))$ with
    $\beta^2 = q/2$, and $\sigma'(\sqrt q z) = \tfrac12 + \tfrac12\mathrm{erf}(\beta
    z) + \sqrt{q/2\pi}\, z e^{-\beta^2 z^2}$; multiplication by $z$ shifts the
    coefficients (`shift_down`) of the erf and Gaussian terms.
    """
    erf_c, _ = erf_coefficients(1.0, np.sqrt(0.5), 0.0, q, degree + 1)
    linear = jnp.zeros_like(erf_c).at[..., 0].set(1.0)  # coefficients of 1
    root = jnp.sqrt(q)[..., None]
    nngp = root / 2 * shift_down(linear + erf_c)
    gauss = gaussian_moments(q / 2, degree + 1)
    dot = erf_c[..., :-1] / 2 + jnp.sqrt(q / (2 * np.pi))[..., None] * shift_down(gauss)
    return nngp, dot.at[..., 0].add(0.5)


@functools.cache
def gauss_rule(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The `n`-point Gauss rule of the standard normal weight: nodes $x_i$,
    weights $w_i$ (summing to 1), and the orthonormal $h_k(x_i)$ for
    $k < n$ by the recurrence $h_{k+1} = (x h_k - \sqrt k\, h_{k-1})/\sqrt{k+1}$.
    Pure and read-only, hence memoised."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    basis = np.zeros((n, n))
    basis[:, 0] = 1.0
    if n > 1:
        basis[:, 1] = x
    for k in range(1, n - 1):
        basis[:, k + 1] = (x * basis[:, k] - np.sqrt(k) * basis[:, k - 1]) / np.sqrt(
            k + 1
        )
    for arr in (x, w, basis):
        arr.flags.writeable = False
    return x, w, basis


def quadrature_coefficients(fn, q: Array, degree: int) -> Array:
    r"""$a_k(q) = E[f(\sqrt q z) h_k(z)] \approx \sum_i w_i f(\sqrt q x_i)
    h_k(x_i)$, $k = 0..p$, by the `QUADRATURE_NODES`-point Gauss-Hermite rule
    (exact when $f(\sqrt q\,\cdot)$ is a polynomial of degree below
    $2n - p$)."""
    x, w, basis = gauss_rule(QUADRATURE_NODES)
    values = fn(jnp.sqrt(q)[..., None] * jnp.asarray(x, q.dtype))
    weighted = jnp.asarray(w[:, None] * basis[:, : degree + 1], q.dtype)
    return values @ weighted


# ------------------------------------------------------------ allocation


def allocate(energy, total: int, cap: int, min_width: int) -> tuple[int, ...]:
    r"""Widths $m_k \propto$ `energy[k]` (degrees $k = 1..p$ at positions
    $0..p-1$) summing to `total`, the variance-optimal split of a sketch
    budget when degree $k$ has weight `energy[k]`. Degree 1 is capped at
    `cap` (the input width, where it is exact); degrees whose share falls
    below `min_width` columns are dropped and their share redistributed."""
    energy = np.asarray(energy, float)
    keep = energy > 0
    while True:
        widths = np.zeros(len(energy))
        budget = float(total)
        weights = np.where(keep, energy, 0.0)
        if keep[0] and weights.sum() > 0 and budget * weights[0] / weights.sum() > cap:
            widths[0] = cap
            budget -= cap
            weights[0] = 0.0
        if weights.sum() > 0:
            widths += budget * weights / weights.sum()
        small = keep & (widths < min_width)
        small[0] = False  # the linear term is always kept
        if not small.any() or not keep.any():
            break
        keep[np.nonzero(small)[0][-1]] = False  # drop the highest small degree
    floor = np.floor(widths).astype(int)
    order = np.argsort(-(widths - floor))
    floor[order[: int(round(widths.sum())) - floor.sum()]] += 1
    return tuple(int(w) for w in floor)


def _chain(widths: dict[int, int]) -> dict[int, int]:
    """The widths with the intermediates of the chain: an absent degree below a
    present one (from 2 on) gets the width of the degree above it."""
    widths = dict(widths)
    for k in range(max(widths, default=0), 2, -1):
        if widths.get(k, 0) > 0 and widths.get(k - 1, 0) == 0:
            widths[k - 1] = widths[k]
    return {k: w for k, w in sorted(widths.items()) if w > 0}


class Plan(NamedTuple):
    """Static widths of a Hermite feature layer at one input shape."""

    nngp: tuple[tuple[int, int], ...]  # (degree >= 1, width), after a constant column
    step: tuple[tuple[int, int], ...]  # (degree >= 1, width) of Phi_0 (poly_sketch)
    sketch: tuple[tuple[int, int], ...]  # (degree, width) of the HermiteSketch
    part_a: int  # columns of b_0 S_A Psi (0: no constant part)
    exact_a: bool  # S_A is the identity
    has_b: bool  # whether the derivative dual has a non-constant part
    part_b: int  # columns of S_B (0 for the explicit product)
    explicit: bool  # sketch_dim=None


def plan_widths(a2, b2, config, d: int, ntk: int, min_width: int) -> Plan:
    r"""The widths of a `poly_sketch` / `combined` layer from the energies
    $a_k(1)^2$, $b_k(1)^2$ (`a2`, `b2`), for NNGP and NTK inputs of widths `d`
    and `ntk`: `allocate` per degree (degree 1 is $u$ itself, for both uses,
    where either share reaches `d`), and `sketch_dim` split between $S_A$ and
    $S_B$ as $b_0^2$ against $\sum_{k \ge 1} b_k^2$."""
    cfg = config
    nngp = dict(enumerate(allocate(a2[1:], cfg.nngp_dim - 1, d, min_width), 1))
    step = {}
    if cfg.method == "poly_sketch" and ntk:
        step = dict(enumerate(allocate(b2[1:], cfg.step_dim, d, min_width), 1))
    nngp = {k: w for k, w in nngp.items() if w > 0}
    step = {k: w for k, w in step.items() if w > 0}
    for widths in (nngp, step):
        if 1 in widths and max(nngp.get(1, 0), step.get(1, 0)) >= d:
            widths[1] = d
    sketch = {k: max(nngp.get(k, 0), step.get(k, 0)) for k in {*nngp, *step}}
    rest = b2[1:].sum() if cfg.method == "combined" else sum(b2[k] for k in step)
    has_b, explicit = bool(rest > 0), cfg.sketch_dim is None
    part_a, exact_a, part_b = 0, False, 0
    if ntk and explicit:
        part_a, exact_a = (ntk, True) if b2[0] > 0 else (0, False)
    elif ntk:
        m = cfg.sketch_dim
        if b2[0] > 0:
            share = b2[0] / (b2[0] + rest)
            part_a = int(np.clip(round(m * share), 1, m - 1 if has_b else m))
            if ntk <= part_a:
                part_a, exact_a = ntk, True
        part_b = m - part_a if has_b else 0
    items = [tuple(sorted(x.items())) for x in (nngp, step, sketch)]
    return Plan(*items, part_a, exact_a, has_b, part_b, explicit)


# ------------------------------------------------------------ sketch


def draw_indices(key: PRNGKeyArray, specs) -> list[Array]:
    """Independent uniform indices, one array of `n` in `[0, bound)` per
    `(n, bound)` of `specs` (`bound` a power of two), from one draw of random
    bits: one random call, however many arrays (each shape would compile its
    own program outside `jit`)."""
    total = sum(n for n, _ in specs)
    bits = jax.random.bits(key, (max(total, 1),), jnp.uint32)
    starts = np.cumsum([0] + [n for n, _ in specs])
    return [
        (bits[a : a + n] & (bound - 1)).astype(jnp.int32)
        for a, (n, bound) in zip(starts, specs)
    ]


def draw_signs(key: PRNGKeyArray, sizes) -> list[Array]:
    """Independent random signs, one array per size, from one draw of bits."""
    flat = draw_indices(key, [(n, 2) for n in sizes])
    return [(2 * f - 1).astype(float) for f in flat]


class HermiteSketch(eqx.Module):
    r"""Random features $z_k(u)$ of all tensor powers $u^{\otimes k}$ at once.

    One randomised Hadamard transform $U = H D u$ (random signs $D$, $u$
    zero-padded to $D_0 = 2^{\lceil\log_2 d\rceil}$ entries) serves every
    degree. Degree 1 keeps $m_1$ rows of $U$ drawn without replacement, divided
    by $\sqrt{m_1}$ (an SRHT; $u$ itself when $m_1 \ge d$). Degree $k \ge 2$ is a
    chain of `TensorSRHT`-like products with the exact $U$,

    $$z_k(u)_r = \frac{1}{\sqrt{m_k}}\, Z_{k-1}[i_r]\, U[j_r], \qquad
      Z_1 = U, \quad Z_{k-1} = H D_{k-1} z_{k-1}(u) \;(k > 2),$$

    with indices $i_r, j_r$ drawn uniformly and independently. Given the
    transforms, $E_i[Z_{k-1}[i] Z'_{k-1}[i]] = \langle z_{k-1}, z'_{k-1}\rangle$
    and $E_j[U[j] U'[j]] = \langle u, u'\rangle$ exactly, so by induction
    $E\langle z_k(u), z_k(v)\rangle = \langle u, v\rangle^k$ for every degree,
    and the shared $U$ costs one $O(d \log d)$ transform for all of them. (A
    product of two sketched factors, as in a balanced tree over shared
    sketches, would be biased: the factors' errors are correlated.) A missing
    degree below a wanted one becomes an intermediate of the chain.

    **Arguments:**

    - `in_dim`: the dimension $d$ of $u$.
    - `widths`: `{degree: width}` for the degrees wanted ($k \ge 1$).
    - `key`: the randomness of the sketch.
    """

    signs: Float[Array, " D"]
    linear_rows: Int[Array, " m1"] | None
    left: tuple[Int[Array, " m"], ...]
    right: tuple[Int[Array, " m"], ...]
    node_signs: tuple[Float[Array, " D"], ...]
    in_dim: int = eqx.field(static=True)
    widths: tuple[tuple[int, int], ...] = eqx.field(static=True)

    def __init__(self, in_dim: int, widths: dict[int, int], *, key: PRNGKeyArray):
        big = next_power_of_two(in_dim)
        widths = _chain(widths)
        if widths.get(1, 0) >= in_dim:
            widths[1] = in_dim
        products = [k for k in widths if k > 1]
        k1, k2, k3 = jax.random.split(key, 3)
        sizes = [big] + [next_power_of_two(widths[k - 1]) for k in products[1:]]
        self.signs, *node_signs = draw_signs(k1, sizes)
        self.node_signs = tuple(node_signs)  # of degrees 2.. top - 1
        self.linear_rows = None
        if 1 in widths and widths[1] < in_dim:
            self.linear_rows = jax.random.permutation(k2, big)[: widths[1]]
        specs = []
        for k in products:
            left = big if k == 2 else next_power_of_two(widths[k - 1])
            specs += [(widths[k], left), (widths[k], big)]
        draws = draw_indices(k3, specs)
        self.left, self.right = tuple(draws[0::2]), tuple(draws[1::2])
        self.in_dim = in_dim
        self.widths = tuple(widths.items())

    def __call__(self, u: Float[Array, "*batch d"]) -> dict[int, Array]:
        """`{degree: z_k(u)}`, each `(*batch, width_k)`."""
        dtype = u.dtype
        big_u = fwht(pad_to_power_of_two(u) * self.signs.astype(dtype))
        z, previous = {}, big_u  # previous: the transform Z_{k-1}
        rows = iter(zip(self.left, self.right))
        signs = iter(self.node_signs)
        for k, width in self.widths:
            scale = np.sqrt(width).astype(dtype)
            if k == 1:
                rows1 = self.linear_rows
                z[1] = u if rows1 is None else big_u[..., rows1] / scale
                continue
            i, j = next(rows)
            z[k] = previous[..., i] * big_u[..., j] / scale
            if k < self.widths[-1][0]:
                previous = fwht(pad_to_power_of_two(z[k]) * next(signs).astype(dtype))
        return z


def take(z: dict[int, Array], degree: int, width: int) -> Array:
    """The first `width` columns of `z[degree]`, rescaled so that inner products
    keep their expectation (columns are exchangeable samples)."""
    full = z[degree]
    total = full.shape[-1]
    if width >= total:
        return full
    return full[..., :width] * np.sqrt(total / width).astype(full.dtype)


class TangentSketch(eqx.Module):
    r"""NTK features $\Psi' = [b_0\, S_A \Psi,\ S_B(\Phi_0 \otimes \Psi)]$ of
    $\dot T \odot \Theta$, where $\dot T = b_0 b'_0 + \langle \Phi_0,
    \Phi'_0\rangle$ (per-example $b_0$, derivative features $\Phi_0$).

    With $V = H D \Psi$ (one randomised Hadamard transform), $S_A$ keeps
    `part_a` rows of $V$ drawn without replacement, divided by
    $\sqrt{m_A}$ (or is the identity when `exact_a`), and $S_B(\Phi_0 \otimes
    \Psi)_r = (H D_0 \Phi_0)[i_r]\, V[j_r] / \sqrt{m_B}$, a `TensorSRHT`
    sharing $V$ (the explicit product $\Phi_0 \otimes \Psi$ when `part_b` is
    None). Given $V$ both are unbiased, so $E[\Psi'\Psi'^\top] = \dot T \odot
    \Psi\Psi^\top$. The constant part $b_0 b'_0$ of $\dot T$ (for the ReLU,
    half of it on the diagonal and more off it) thus costs no tensor sketch.

    **Arguments:**

    - `psi_width`, `step_width`: the widths of $\Psi$ and $\Phi_0$.
    - `part_a`: the columns of $S_A \Psi$ (0: no constant part).
    - `exact_a`: whether $S_A$ is the identity (then `part_a == psi_width`).
    - `part_b`: the columns of $S_B$ (0: none; None: the explicit product).
    - `key`: the randomness of the sketch.
    """

    psi_signs: Float[Array, " D"] | None
    rows: Int[Array, " ma"] | None
    step_signs: Float[Array, " D0"] | None
    left: Int[Array, " mb"] | None
    right: Int[Array, " mb"] | None
    psi_width: int = eqx.field(static=True)
    part_a: int = eqx.field(static=True)
    exact_a: bool = eqx.field(static=True)
    part_b: int | None = eqx.field(static=True)

    def __init__(self, psi_width: int, step_width: int, part_a: int, exact_a: bool,
                 part_b: int | None, *, key: PRNGKeyArray):  # fmt: skip
        ks = jax.random.split(key, 3)
        big, big0 = next_power_of_two(psi_width), next_power_of_two(step_width)
        self.part_a, self.exact_a, self.part_b = part_a, exact_a, part_b
        self.psi_width = psi_width
        sketched_a = part_a > 0 and not exact_a
        sketched_b = part_b is not None and part_b > 0
        signs, step_signs = draw_signs(ks[0], [big, big0])
        self.psi_signs = signs if sketched_a or sketched_b else None
        self.rows = jax.random.permutation(ks[1], big)[:part_a] if sketched_a else None
        self.step_signs = self.left = self.right = None
        if sketched_b:
            self.step_signs = step_signs
            self.left, self.right = draw_indices(ks[2], [(part_b, big0), (part_b, big)])

    def __call__(
        self,
        b0: Float[Array, "*batch"],
        step: Float[Array, "*batch d0"] | None,
        psi: Float[Array, "*batch d"],
    ) -> Float[Array, "*batch m"]:
        dtype, parts = psi.dtype, []
        if self.psi_signs is not None:
            v = fwht(pad_to_power_of_two(psi) * self.psi_signs.astype(dtype))
        if self.part_a and self.rows is None:
            parts.append(b0[..., None] * psi)
        elif self.part_a:
            scale = np.sqrt(self.part_a).astype(dtype)
            parts.append(b0[..., None] * v[..., self.rows] / scale)
        if step is not None and self.part_b is None:
            outer = step[..., :, None] * psi[..., None, :]
            parts.append(outer.reshape(psi.shape[:-1] + (-1,)))
        elif step is not None and self.part_b:
            s = fwht(pad_to_power_of_two(step) * self.step_signs.astype(dtype))
            scale = np.sqrt(self.part_b).astype(dtype)
            parts.append(s[..., self.left] * v[..., self.right] / scale)
        return jnp.concatenate(parts, axis=-1)
