r"""Sketches: random linear maps that preserve inner products in expectation.

Every sketch $S$ here is drawn once, at construction, and stored as fields of an
Equinox module, so one sketch embeds any number of batches consistently. Each
is unbiased: $E_S[\langle S a, S b\rangle] = \langle a, b\rangle$ (for the
tensor sketches, with $a = x \otimes y$ or $a = x^{\otimes p}$), and its
variance falls like $1/m$ in the sketch dimension $m$. Sketches act on the last
axis of their inputs; leading axes are batch axes. The output has the dtype of
the input.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


def next_power_of_two(n: int) -> int:
    """The smallest power of two that is at least `n` (and at least 1)."""
    return 1 << max(n - 1, 0).bit_length()


def fwht(x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
    r"""Fast Walsh-Hadamard transform along the last axis, $x \mapsto H_d x$.

    $H_d$ is the unnormalised Sylvester-Hadamard matrix, $H_1 = (1)$,
    $H_{2n} = \begin{pmatrix} H_n & H_n \\ H_n & -H_n \end{pmatrix}$, with entries
    $\pm 1$ and $H_d H_d^\top = d I$ (as `scipy.linalg.hadamard`). It costs
    $O(d \log d)$: one butterfly per bit of the index. `d` must be a power of two.

    **Example:**

    ```pycon
    >>> from scipy.linalg import hadamard
    >>> x = jax.random.normal(jax.random.key(0), (3, 8))
    >>> bool(jnp.allclose(et.features.fwht(x), x @ hadamard(8)))
    True
    ```
    """
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(
            f"fwht: the last axis has length {d}, which is not a power of two; "
            "pad it with zeros first (`pad_to_power_of_two`)."
        )
    batch = x.shape[:-1]
    h = 1
    while h < d:
        y = x.reshape(batch + (d // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(batch + (d,))
        h *= 2
    return x


def pad_to_power_of_two(x: Float[Array, "*batch d"]) -> Float[Array, "*batch D"]:
    """Zero-pads the last axis to the next power of two."""
    d = x.shape[-1]
    pad = next_power_of_two(d) - d
    if pad == 0:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def _check_dim(name: str, x: Array, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ValueError(
            f"{name} was drawn for inputs of dimension {expected}, but got an "
            f"input with last axis {x.shape[-1]}; draw it with `in_dim="
            f"{x.shape[-1]}`."
        )


def _check_sizes(name: str, **sizes: int) -> None:
    for label, size in sizes.items():
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name}: `{label}` must be a positive int, got {size!r}.")


class GaussianSketch(eqx.Module):
    r"""Gaussian projection $S x = G x / \sqrt{m}$, $G_{ij} \sim N(0, 1)$.

    $E[\langle Sx, Sy\rangle] = \frac1m \sum_k E[(g_k^\top x)(g_k^\top y)] =
    \langle x, y \rangle$, with variance $(\langle x,y\rangle^2 + |x|^2|y|^2)/m$.
    Costs $O(md)$ per vector.

    **Arguments:**

    - `in_dim`, `out_dim`: the input dimension $d$ and sketch dimension $m$.
    - `key`: the randomness of the sketch.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 100))
    >>> def inner(key):                                  # <S x_0, S x_1>, one sketch
    ...     sx = et.features.GaussianSketch(100, 16, key=key)(x)
    ...     return sx[0] @ sx[1]
    >>> draws = jax.vmap(inner)(jax.random.split(jax.random.key(1), 2000))
    >>> target = x[0] @ x[1]
    >>> error = jnp.abs(draws.mean() - target)  # unbiased: within 4 standard errors
    >>> bool(error < 4 * draws.std() / jnp.sqrt(2000.0))
    True
    ```
    """

    matrix: Float[Array, "m d"]

    def __init__(self, in_dim: int, out_dim: int, *, key: PRNGKeyArray):
        _check_sizes("GaussianSketch", in_dim=in_dim, out_dim=out_dim)
        self.matrix = jax.random.normal(key, (out_dim, in_dim))

    def __call__(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch m"]:
        _check_dim("GaussianSketch", x, self.matrix.shape[1])
        m = self.matrix.shape[0]
        return (x @ self.matrix.T.astype(x.dtype)) / jnp.sqrt(m).astype(x.dtype)


class SRHT(eqx.Module):
    r"""Subsampled randomised Hadamard transform $S x = \sqrt{1/m}\, P H D x$.

    $x$ is zero-padded to dimension $D = 2^{\lceil \log_2 d \rceil}$, $D$ is a
    diagonal of random signs, $H$ the $\pm 1$ Hadamard matrix (applied by `fwht`
    in $O(D \log D)$), and $P$ keeps $m \le D$ of its rows, drawn uniformly
    without replacement. As $H D$ is $\sqrt{D}$ times an orthogonal matrix and
    each row is kept with probability $m / D$,
    $E[\langle Sx, Sy\rangle] = \frac1m \frac mD \langle HDx, HDy\rangle =
    \langle x, y\rangle$.

    **Arguments:**

    - `in_dim`, `out_dim`: the input dimension $d$ and sketch dimension
      $m \le D$.
    - `key`: the randomness of the sketch.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 100))
    >>> def inner(key):                                  # <S x_0, S x_1>, one sketch
    ...     sx = et.features.SRHT(100, 16, key=key)(x)
    ...     return sx[0] @ sx[1]
    >>> draws = jax.vmap(inner)(jax.random.split(jax.random.key(1), 2000))
    >>> target = x[0] @ x[1]
    >>> error = jnp.abs(draws.mean() - target)  # unbiased: within 4 standard errors
    >>> bool(error < 4 * draws.std() / jnp.sqrt(2000.0))
    True
    ```
    """

    signs: Float[Array, " D"]
    rows: Int[Array, " m"]
    in_dim: int = eqx.field(static=True)

    def __init__(self, in_dim: int, out_dim: int, *, key: PRNGKeyArray):
        _check_sizes("SRHT", in_dim=in_dim, out_dim=out_dim)
        big = next_power_of_two(in_dim)
        if out_dim > big:
            raise ValueError(
                f"SRHT: `out_dim={out_dim}` exceeds the padded dimension {big}; "
                "use `out_dim <= 2**ceil(log2(in_dim))` or a `GaussianSketch`."
            )
        skey, rkey = jax.random.split(key)
        self.signs = jax.random.rademacher(skey, (big,), dtype=float)
        self.rows = jax.random.permutation(rkey, big)[:out_dim]
        self.in_dim = in_dim

    def __call__(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch m"]:
        _check_dim("SRHT", x, self.in_dim)
        y = fwht(pad_to_power_of_two(x) * self.signs.astype(x.dtype))
        m = self.rows.shape[0]
        return y[..., self.rows] / jnp.sqrt(m).astype(x.dtype)


class CountSketch(eqx.Module):
    r"""CountSketch $(S x)_j = \sum_{i : h(i) = j} s_i x_i$ (Charikar et al. 2002).

    Each coordinate $i$ is hashed to a bucket $h(i)$ uniform in $\{1..m\}$ and a
    sign $s_i = \pm 1$. Then $\langle Sx, Sy\rangle = \sum_{i,i'} s_i s_{i'}
    [h(i) = h(i')] x_i y_{i'}$, whose cross terms vanish in expectation, so
    $E[\langle Sx, Sy\rangle] = \langle x, y\rangle$. Costs $O(d)$ per vector.

    **Arguments:**

    - `in_dim`, `out_dim`: the input dimension $d$ and number of buckets $m$.
    - `key`: the randomness of the sketch.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 100))
    >>> def inner(key):                                  # <S x_0, S x_1>, one sketch
    ...     sx = et.features.CountSketch(100, 16, key=key)(x)
    ...     return sx[0] @ sx[1]
    >>> draws = jax.vmap(inner)(jax.random.split(jax.random.key(1), 2000))
    >>> target = x[0] @ x[1]
    >>> error = jnp.abs(draws.mean() - target)  # unbiased: within 4 standard errors
    >>> bool(error < 4 * draws.std() / jnp.sqrt(2000.0))
    True
    ```
    """

    buckets: Int[Array, " d"]
    signs: Float[Array, " d"]
    out_dim: int = eqx.field(static=True)

    def __init__(self, in_dim: int, out_dim: int, *, key: PRNGKeyArray):
        _check_sizes("CountSketch", in_dim=in_dim, out_dim=out_dim)
        hkey, skey = jax.random.split(key)
        self.buckets = jax.random.randint(hkey, (in_dim,), 0, out_dim)
        self.signs = jax.random.rademacher(skey, (in_dim,), dtype=float)
        self.out_dim = out_dim

    def __call__(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch m"]:
        _check_dim("CountSketch", x, self.buckets.shape[0])
        out = jnp.zeros(x.shape[:-1] + (self.out_dim,), x.dtype)
        return out.at[..., self.buckets].add(x * self.signs.astype(x.dtype))


class TensorSRHT(eqx.Module):
    r"""Sketch of the tensor product $x \otimes y$ without forming it.

    With $u = H D_1 x$ and $v = H D_2 y$ (zero-padded to powers of two $D_1$,
    $D_2$, random signs $D_1$, $D_2$, $\pm 1$ Hadamard matrices $H$),
    and indices $i_k$, $j_k$ drawn uniformly and independently for
    $k = 1..m$ (Ahle et al. 2020; Zandieh et al. 2021),

    $$S(x \otimes y)_k = \frac{1}{\sqrt m}\, u_{i_k} v_{j_k}.$$

    Since $E_i[u_i u'_i] = \frac{1}{D_1}\langle u, u'\rangle = \langle x, x'\rangle$
    and likewise for $v$, $E[\langle S(x \otimes y), S(x' \otimes y')\rangle] =
    \langle x, x'\rangle\langle y, y'\rangle = \langle x \otimes y, x' \otimes y'
    \rangle$. Costs $O(D_1 \log D_1 + D_2 \log D_2 + m)$ per pair instead of
    $O(d_1 d_2)$.

    **Arguments:**

    - `in_dim1`, `in_dim2`: the dimensions of $x$ and $y$.
    - `out_dim`: the sketch dimension $m$ (any positive size).
    - `key`: the randomness of the sketch.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 100))
    >>> def inner(key):                                  # <S x_0, S x_1>, one sketch
    ...     sketch = et.features.TensorSRHT(100, 100, 16, key=key)
    ...     sx = sketch(x, x[::-1])  # x_0 (x) x_1 and x_1 (x) x_0
    ...     return sx[0] @ sx[1]
    >>> draws = jax.vmap(inner)(jax.random.split(jax.random.key(1), 2000))
    >>> target = (x[0] @ x[1]) ** 2
    >>> error = jnp.abs(draws.mean() - target)  # unbiased: within 4 standard errors
    >>> bool(error < 4 * draws.std() / jnp.sqrt(2000.0))
    True
    ```
    """

    signs1: Float[Array, " D1"]
    signs2: Float[Array, " D2"]
    rows1: Int[Array, " m"]
    rows2: Int[Array, " m"]
    in_dim1: int = eqx.field(static=True)
    in_dim2: int = eqx.field(static=True)

    def __init__(self, in_dim1: int, in_dim2: int, out_dim: int, *, key: PRNGKeyArray):
        _check_sizes("TensorSRHT", in_dim1=in_dim1, in_dim2=in_dim2, out_dim=out_dim)
        big1, big2 = next_power_of_two(in_dim1), next_power_of_two(in_dim2)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.signs1 = jax.random.rademacher(k1, (big1,), dtype=float)
        self.signs2 = jax.random.rademacher(k2, (big2,), dtype=float)
        self.rows1 = jax.random.randint(k3, (out_dim,), 0, big1)
        self.rows2 = jax.random.randint(k4, (out_dim,), 0, big2)
        self.in_dim1, self.in_dim2 = in_dim1, in_dim2

    @property
    def out_dim(self) -> int:
        """The sketch dimension $m$."""
        return self.rows1.shape[0]

    def __call__(
        self, x: Float[Array, "*batch d1"], y: Float[Array, "*batch d2"]
    ) -> Float[Array, "*batch m"]:
        _check_dim("TensorSRHT (first factor)", x, self.in_dim1)
        _check_dim("TensorSRHT (second factor)", y, self.in_dim2)
        u = fwht(pad_to_power_of_two(x) * self.signs1.astype(x.dtype))
        v = fwht(pad_to_power_of_two(y) * self.signs2.astype(y.dtype))
        out = u[..., self.rows1] * v[..., self.rows2]
        return out / jnp.sqrt(self.out_dim).astype(out.dtype)


class PolySketch(eqx.Module):
    r"""Sketch of the tensor power $x^{\otimes p}$ (Ahle et al. 2020).

    The $p$ factors are the leaves of a complete binary tree of depth
    $L = \lceil \log_2 p \rceil$; the $2^L - p$ spare leaves hold the constant
    vector $(1)$, which leaves inner products unchanged. Each internal node is an
    independent `TensorSRHT` of its two children, so the root is an
    $m$-dimensional vector $S(x^{\otimes p})$ computed in
    $O(p (d \log d + m \log m))$ rather than $O(d^p)$. By independence of the
    nodes, conditioning level by level,

    $$E[\langle S(x^{\otimes p}), S(y^{\otimes p})\rangle] = \langle x, y\rangle^p.$$

    **Arguments:**

    - `in_dim`: the dimension $d$ of $x$.
    - `out_dim`: the sketch dimension $m$ of every node.
    - `degree`: the power $p \ge 1$ (for $p = 1$ the tree is one `TensorSRHT`
      of $x$ with $(1)$).
    - `key`: the randomness of the sketch.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 100))
    >>> def inner(key):                                  # <S x_0, S x_1>, one sketch
    ...     sx = et.features.PolySketch(100, 16, degree=3, key=key)(x / 10)
    ...     return sx[0] @ sx[1]
    >>> draws = jax.vmap(inner)(jax.random.split(jax.random.key(1), 2000))
    >>> target = (x[0] @ x[1] / 100) ** 3
    >>> error = jnp.abs(draws.mean() - target)  # unbiased: within 4 standard errors
    >>> bool(error < 4 * draws.std() / jnp.sqrt(2000.0))
    True
    ```
    """

    levels: tuple[tuple[TensorSRHT, ...], ...]
    degree: int = eqx.field(static=True)
    in_dim: int = eqx.field(static=True)

    def __init__(self, in_dim: int, out_dim: int, degree: int, *, key: PRNGKeyArray):
        _check_sizes("PolySketch", in_dim=in_dim, out_dim=out_dim, degree=degree)
        width = next_power_of_two(degree)
        dims = [in_dim] * degree + [1] * (width - degree)
        if width == 1:
            dims = [in_dim, 1]
            width = 2
        levels = []
        while width > 1:
            keys = jax.random.split(key, width // 2 + 1)
            key = keys[0]
            level = tuple(
                TensorSRHT(dims[2 * i], dims[2 * i + 1], out_dim, key=keys[i + 1])
                for i in range(width // 2)
            )
            levels.append(level)
            dims = [out_dim] * (width // 2)
            width //= 2
        self.levels = tuple(levels)
        self.degree = degree
        self.in_dim = in_dim

    def __call__(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch m"]:
        _check_dim("PolySketch", x, self.in_dim)
        one = jnp.ones(x.shape[:-1] + (1,), x.dtype)
        leaves = len(self.levels[0]) * 2
        nodes = [x] * min(self.degree, leaves) + [one] * (leaves - self.degree)
        for level in self.levels:
            nodes = [
                node(nodes[2 * i], nodes[2 * i + 1]) for i, node in enumerate(level)
            ]
        return nodes[0]
