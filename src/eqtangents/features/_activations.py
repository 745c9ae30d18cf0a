r"""Feature maps of elementwise activations: Hermite sketches and random features.

For an example with NNGP feature $\phi$, $q = |\phi|^2$ is the variance of the
network's preactivation and $u = \phi/|\phi|$; the duals are
$T = \sum_k a_k(q_1) a_k(q_2) \rho^k$ and $\dot T = \sum_k b_k(q_1) b_k(q_2)
\rho^k$ with $\rho = \langle u_1, u_2\rangle$ (Mehler's formula; `_hermite`),
as used by Han et al. 2022, "Fast Neural Kernel Embeddings for General
Activations".
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._layers import exponential, numerical, smooth
from .._layers._activation import AbstractActivation
from .._layers.smooth import real
from ._features import (
    AbstractFeatureLayer,
    Features,
    FeatureShape,
    as_feature_shape,
    exact_activation,
    missing_projections,
)
from ._hermite import (
    HermiteSketch,
    Plan,
    TangentSketch,
    erf_coefficients,
    gelu_coefficients,
    plan_widths,
    quadrature_coefficients,
    sin_coefficients,
    take,
)
from ._sketch import TensorSRHT

Method = Literal["poly_sketch", "combined", "random_features", "exact"]
METHODS = ("poly_sketch", "combined", "random_features", "exact")
MIN_WIDTH = 8  # narrower Hermite degrees are left out (below the sketch's noise)


class Config(NamedTuple):
    """The static options of an activation feature layer."""

    method: str
    nngp_dim: int
    step_dim: int
    sketch_dim: int | None
    degree: int
    tol: float | None


def make_config(layer, method, nngp_dim, step_dim, sketch_dim, degree, tol) -> Config:
    """Validates the options shared by the activation feature layers. The default
    `step_dim` is a quarter of the NTK width for `poly_sketch` (whose error
    hardly depends on it) and the NTK width otherwise."""
    where = f"features.{layer}"
    if method not in METHODS:
        raise ValueError(f"{where}: `method` must be one of {METHODS}, got {method!r}.")
    if step_dim is None and isinstance(sketch_dim or nngp_dim, int):
        width = sketch_dim or nngp_dim
        step_dim = max(1, width // 4) if method == "poly_sketch" else width
    minimum = {"nngp_dim": 1, "step_dim": 1, "degree": 1, "sketch_dim": 2}
    values = dict(nngp_dim=nngp_dim, step_dim=step_dim, degree=degree)
    if sketch_dim is not None:
        values["sketch_dim"] = sketch_dim
    for name, value in values.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum[name]
        ):
            raise ValueError(
                f"{where}: `{name}` must be an int >= {minimum[name]}, got {value!r}"
                + (
                    " (or None for the explicit tensor product)."
                    if name == "sketch_dim"
                    else "."
                )
            )
    if tol is not None:
        tol = real(tol, where, "tol", nonnegative=True)
    return Config(method, nngp_dim, step_dim, sketch_dim, degree, tol)


def mirror(cls, *args):
    """The network layer `cls(*args)`, its errors renamed to the feature layer."""
    try:
        return cls(*args)
    except ValueError as e:
        raise ValueError(f"features.{e}") from None


class HermiteProjections(eqx.Module):
    """The randomness of a `poly_sketch` or `combined` layer."""

    sketch: HermiteSketch
    step_proj: Float[Array, "m0 d"] | None
    tangent: TangentSketch | None
    plan: Plan = eqx.field(static=True)
    in_widths: tuple[int, int] = eqx.field(static=True)


class RandomProjections(eqx.Module):
    """The randomness of a `random_features` layer."""

    nngp_proj: Float[Array, "m1 d"]
    step_proj: Float[Array, "m0 d"] | None
    tensor: TensorSRHT | None
    in_widths: tuple[int, int] = eqx.field(static=True)


Projections = HermiteProjections | RandomProjections


class AbstractActivationFeatures(AbstractFeatureLayer):
    r"""Features of an elementwise activation $\sigma$ (every activation layer).

    **Methods** (the `method` argument):

    - `"poly_sketch"` (Han et al. 2022): the truncated Hermite expansion,
      sketched. With $q = |\phi|^2$, $u = \phi/|\phi|$ and the `HermiteSketch`
      $z_k(u)$ ($E\langle z_k(u_1), z_k(u_2)\rangle = \rho^k$),
      $\Phi' = [a_0(q),\ a_1(q) z_1(u),\ \dots,\ a_p(q) z_p(u)]$,
      $\Phi_0 = [b_1(q) z_1(u),\ \dots,\ b_p(q) z_p(u)]$ and
      $\Psi' = [b_0(q) S_A\Psi,\ S_B(\Phi_0 \otimes \Psi)]$ (`TangentSketch`),
      so $E[\Phi'\Phi'^\top]$ and $E[\Psi'\Psi'^\top]$ are the duals truncated
      at `degree`. Degree $k$ gets a share of `nngp_dim` (of `step_dim` for
      $\Phi_0$) proportional to $a_k(1)^2$ ($b_k(1)^2$), the variance-optimal
      split; degree 1 is $u$ itself when the input is narrower than its share,
      and degrees whose share is under `MIN_WIDTH` columns are left out.
      `sketch_dim` splits between $S_A$ and $S_B$ as $b_0(1)^2$ against
      $\sum_{k \ge 1} b_k(1)^2$. Cost: one Hadamard transform each of $u$,
      $\Psi$ and $\Phi_0$ (and a few narrow ones) per example.
    - `"combined"`: $\Phi'$ as above, and random features for the derivative,
      $\Phi_0 = (\sigma'(\Phi W^\top) - b_0(q)) / \sqrt{m_0}$ with
      $W \in \mathbb R^{m_0 \times d}$ Gaussian (unbiased for
      $\dot T - b_0 b'_0$ without truncation; Zandieh et al. 2021 likewise
      combine polynomial sketches and random features).
    - `"random_features"` (Zandieh et al. 2021): $\Phi' = \sigma(\Phi W_1^\top)
      / \sqrt{m_1}$, $\Phi_0 = \sigma'(\Phi W_0^\top)/\sqrt{m_0}$ and
      $\Psi' = S(\Phi_0 \otimes \Psi)$, a `TensorSRHT` (or the explicit product
      when `sketch_dim=None`); unbiased, as $w^\top\phi \sim N(0, K)$.
    - `"exact"` (for debugging): factorises the exact $K'$, $\Theta'$ of the
      batch (`exact_activation`), $O(N^3)$; the features hold for that batch only.

    **Input requirement.** The expansion holds at every variance $q$ (inputs
    need not lie on a sphere), but the error of its truncation at degree $p$,
    largest on the diagonal ($\rho = 1$) where it is
    $1 - \sum_{k \le p} a_k(q)^2 / T(q, q, q)$ relative, grows with $q$, and
    the widths are split for $q = 1$. So the inputs must be normalised so that
    the preactivation variances are of order one: with the default `degree=8`
    and `tol=0.05`, $q \lesssim 2.2$ for `Erf()` and for
    `ElementwiseNumerical(jnp.tanh, ...)` (their $\dot T$ converges slowest),
    $7$ for `Gelu()`, $4.4$ for `Sin()`. For activations that are not
    positively homogeneous, `poly_sketch` and `combined` check every example,
    for $T$ and (`poly_sketch`) $\dot T$: a relative truncation error above
    `tol` fails the call through `eqx.error_if`, also under `jit`. The ReLU
    family is homogeneous ($a_k(q) = \sqrt q\, a_k(1)$): its relative error is
    the same at every $q$, and it is not checked.

    **Arguments** (of every activation feature layer, after its own
    hyperparameters):

    - `method`: as above.
    - `nngp_dim`: the width of $\Phi'$.
    - `step_dim`: the width of $\Phi_0$; by default `sketch_dim // 4` for
      `poly_sketch`, `sketch_dim` otherwise.
    - `sketch_dim`: the width of $\Psi'$; `None` for the explicit product.
    - `degree`: the truncation degree $p$ of the Hermite expansions.
    - `tol`: the largest relative truncation error allowed on the diagonal.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> k = et.Serial(et.Dense(1), et.Erf()).kernel(x, None)
    >>> for method in ("poly_sketch", "combined", "random_features", "exact"):
    ...     act = et.features.Erf(method=method, nngp_dim=4096, sketch_dim=4096)
    ...     fmodel = et.features.Serial(et.features.Dense(), act)
    ...     fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    ...     f = fmodel(et.features.Features.from_inputs(x))
    ...     ntk = et.features.kernel(f, get="ntk")
    ...     print(method, float(jnp.max(jnp.abs(ntk - k.ntk)) / jnp.max(k.ntk)) < 0.05)
    poly_sketch True
    combined True
    random_features True
    exact True
    ```
    """

    config: eqx.AbstractVar[Config]
    projections: eqx.AbstractVar[Projections | None]
    homogeneous: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def network_layer(self) -> AbstractActivation:
        """The network activation (`et.Erf`, ...) whose kernel this mirrors."""

    @abc.abstractmethod
    def coefficients(self, q: Array, degree: int) -> tuple[Array, Array]:
        """$a_k(q)$ and $b_k(q)$, $k = 0..p$, each of shape `q.shape + (p + 1,)`."""

    def fn(self, x: Array) -> Array:
        """The activation, elementwise."""
        return self.network_layer.fn(x)

    def dfn(self, x: Array) -> Array:
        """Its derivative, elementwise (by forward-mode autodiff)."""
        return numerical.derivative_of(self.fn)(x)

    def duals(self, c12, v1, v2, derivative: bool):
        """The network layer's exact duals $T$ and (if `derivative`) $\\dot T$."""
        return self.network_layer.duals(c12, v1, v2, derivative)

    def _name(self) -> str:
        return f"features.{type(self).__name__}"

    def _plan(self, shape: FeatureShape) -> Plan:
        cfg = self.config
        with jax.ensure_compile_time_eval():
            a, b = self.coefficients(jnp.ones((), float), cfg.degree)
            a2, b2 = np.asarray(a) ** 2, np.asarray(b) ** 2
        return plan_widths(a2, b2, cfg, shape.nngp, shape.ntk, MIN_WIDTH)

    def _step_width(self, plan: Plan) -> int:
        if self.config.method == "combined":
            return self.config.step_dim
        return sum(w for _, w in plan.step)

    def output_shape(self, input_shape) -> FeatureShape:
        shape = as_feature_shape(input_shape, self)
        cfg = self.config
        if cfg.method == "exact":
            return FeatureShape(None, None, shape.width, shape.spatial)
        if shape.nngp is None or shape.ntk is None:
            raise ValueError(
                f"{self._name()}(method={cfg.method!r}) follows an exact feature "
                "layer, whose width depends on the batch; use `method='exact'` "
                "throughout, or sketches throughout."
            )
        if cfg.method == "random_features":
            nngp = cfg.nngp_dim
            ntk = cfg.step_dim * shape.ntk if cfg.sketch_dim is None else cfg.sketch_dim
        else:
            plan = self._plan(shape)
            nngp = 1 + sum(w for _, w in plan.nngp)
            ntk = plan.part_a + plan.part_b
            if plan.explicit and plan.has_b:
                ntk += self._step_width(plan) * shape.ntk
        return FeatureShape(nngp, ntk if shape.ntk else 0, shape.width, shape.spatial)

    def init(self, key: PRNGKeyArray, input_shape) -> AbstractActivationFeatures:
        self.output_shape(input_shape)
        if self.config.method == "exact":
            return self
        drawn = _draw(self, key, as_feature_shape(input_shape, self))
        return eqx.tree_at(lambda s: s.projections, self, drawn, is_leaf=_is_none)

    def _draw(self, key: PRNGKeyArray, shape: FeatureShape) -> Projections:
        cfg = self.config
        k1, k2, k3 = jax.random.split(key, 3)
        step_proj = None
        if cfg.method != "poly_sketch" and shape.ntk:
            step_proj = jax.random.normal(k2, (cfg.step_dim, shape.nngp))
        if cfg.method == "random_features":
            tensor = None
            if cfg.sketch_dim is not None and shape.ntk:
                tensor = TensorSRHT(cfg.step_dim, shape.ntk, cfg.sketch_dim, key=k3)
            proj = jax.random.normal(k1, (cfg.nngp_dim, shape.nngp))
            return RandomProjections(proj, step_proj, tensor, shape[:2])
        plan = self._plan(shape)
        sketch = HermiteSketch(shape.nngp, dict(plan.sketch), key=k1)
        tangent = None
        if shape.ntk:
            part_b = (None if plan.explicit else plan.part_b) if plan.has_b else 0
            tangent = TangentSketch(shape.ntk, self._step_width(plan), plan.part_a,
                                    plan.exact_a, part_b, key=k3)  # fmt: skip
        return HermiteProjections(sketch, step_proj, tangent, plan, shape[:2])

    def __call__(self, f: Features) -> Features:
        if self.config.method == "exact":
            return exact_activation(f, lambda c, v1, v2: self.duals(c, v1, v2, True))
        proj = self.projections
        if proj is None:
            raise missing_projections(self)
        phi, psi = f.nngp_feat, f.ntk_feat
        if (phi.shape[-1], psi.shape[-1]) != proj.in_widths:
            raise ValueError(
                f"{self._name()} was initialised for NNGP and NTK features of widths "
                f"{proj.in_widths} but got {(phi.shape[-1], psi.shape[-1])}; call "
                "`init` with the input shape of this layer."
            )
        return f.replace(*_apply(self, proj, phi, psi))

    def _random_features(self, proj: RandomProjections, phi, psi):
        dtype = phi.dtype
        z1 = phi @ proj.nngp_proj.T.astype(dtype)
        nngp = self.fn(z1).astype(dtype) / np.sqrt(z1.shape[-1]).astype(dtype)
        if psi.shape[-1] == 0:
            return nngp, jnp.zeros(phi.shape[:-1] + (0,), dtype)
        z0 = phi @ proj.step_proj.T.astype(dtype)
        step = self.dfn(z0).astype(dtype) / np.sqrt(z0.shape[-1]).astype(dtype)
        if proj.tensor is not None:
            return nngp, proj.tensor(step, psi)
        outer = step[..., :, None] * psi[..., None, :]
        return nngp, outer.reshape(phi.shape[:-1] + (-1,))

    def _hermite_features(self, proj: HermiteProjections, phi, psi):
        dtype, plan, cfg = phi.dtype, proj.plan, self.config
        q = jnp.sum(phi * phi, axis=-1)
        norm = jnp.sqrt(q)
        u = phi / jnp.where(norm > 0, norm, 1)[..., None]
        a, b = (c.astype(dtype) for c in self.coefficients(q, cfg.degree))
        z = proj.sketch(u)
        blocks = [a[..., :1]] + [a[..., k, None] * take(z, k, w) for k, w in plan.nngp]
        nngp = jnp.concatenate(blocks, axis=-1)
        ntk = jnp.zeros(phi.shape[:-1] + (0,), dtype)
        if psi.shape[-1] > 0:
            step = None
            if cfg.method == "combined":
                z0 = phi @ proj.step_proj.T.astype(dtype)
                centre = b[..., :1] if plan.part_a else 0
                step = (self.dfn(z0).astype(dtype) - centre) / np.sqrt(
                    z0.shape[-1]
                ).astype(dtype)
            elif plan.step:
                step = jnp.concatenate(
                    [b[..., k, None] * take(z, k, w) for k, w in plan.step], axis=-1
                )
            ntk = proj.tangent(b[..., 0], step if plan.has_b else None, psi)
        if not self.homogeneous:
            nngp = self._check_truncation(nngp, q, a, b, psi.shape[-1] > 0)
        return nngp, ntk

    def _check_truncation(self, out, q, a, b, tangent: bool):
        t, dot = self.duals(q, q, q, True)
        worst = jnp.max(_relative_tail(t, jnp.sum(a**2, axis=-1)))
        if tangent and self.config.method == "poly_sketch":
            tail = _relative_tail(dot, jnp.sum(b**2, axis=-1))
            worst = jnp.maximum(worst, jnp.max(tail))
        return eqx.error_if(
            out,
            worst > self.config.tol,
            f"{self._name()}: for some example the Hermite expansion truncated at "
            f"degree={self.config.degree} misses more than tol={self.config.tol} of "
            "the kernel on the diagonal: the variance of the activation's input is "
            "too large. Normalise the inputs (or lower W_std / b_std) so that the "
            "variances are of order one, or raise `degree`.",
        )


def _relative_tail(total, kept):
    return jnp.where(total > 0, (total - kept) / jnp.where(total > 0, total, 1), 0.0)


def _is_none(x):
    return x is None


# Compiled as one program each (under an outer `jit` they are inlined): run
# eagerly, every intermediate shape would compile its own.
_draw = eqx.filter_jit(lambda layer, key, shape: layer._draw(key, shape))


@eqx.filter_jit
def _apply(layer, proj, phi, psi):
    if isinstance(proj, RandomProjections):
        return layer._random_features(proj, phi, psi)
    return layer._hermite_features(proj, phi, psi)


# --------------------------------------------------------------- activations


class Erf(AbstractActivationFeatures):
    r"""Features of $\sigma(x) = a\,\mathrm{erf}(bx) + c$ (mirrors `et.Erf`); the
    Hermite coefficients are in closed form (`erf_coefficients`). Arguments

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> act = et.features.Erf(nngp_dim=4096, sketch_dim=4096)
    >>> fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), et.Erf())
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> relative_error(nngp, k.nngp) < 0.05, relative_error(ntk, k.ntk) < 0.05
    (True, True)
    ```
    `a`, `b`, `c`, then those of `AbstractActivationFeatures`."""

    a: float = eqx.field(static=True)
    b: float = eqx.field(static=True)
    c: float = eqx.field(static=True)
    config: Config = eqx.field(static=True)
    projections: Projections | None

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0,
                 method: Method = "poly_sketch", *, nngp_dim: int = 1024,
                 step_dim: int | None = None, sketch_dim: int | None = 1024,
                 degree: int = 8, tol: float = 0.05):  # fmt: skip
        layer = mirror(smooth.Erf, a, b, c)
        self.a, self.b, self.c = layer.a, layer.b, layer.c
        self.config = make_config(
            "Erf", method, nngp_dim, step_dim, sketch_dim, degree, tol
        )
        self.projections = None

    @property
    def network_layer(self) -> smooth.Erf:
        return smooth.Erf(self.a, self.b, self.c)

    def coefficients(self, q: Array, degree: int) -> tuple[Array, Array]:
        return erf_coefficients(self.a, self.b, self.c, q, degree)


class Gelu(AbstractActivationFeatures):
    r"""Features of GELU, $\sigma(x) = x\Phi(x)$ (mirrors `et.Gelu`, whose kernels
    are those of the exact GELU whatever its `approximate`); the Hermite
    coefficients are in closed form (`gelu_coefficients`). Arguments as

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> act = et.features.Gelu(nngp_dim=4096, sketch_dim=4096)
    >>> fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), et.Gelu())
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> relative_error(nngp, k.nngp) < 0.05, relative_error(ntk, k.ntk) < 0.05
    (True, True)
    ```
    `AbstractActivationFeatures`."""

    config: Config = eqx.field(static=True)
    projections: Projections | None

    def __init__(self, method: Method = "poly_sketch", *, nngp_dim: int = 1024,
                 step_dim: int | None = None, sketch_dim: int | None = 1024,
                 degree: int = 8, tol: float = 0.05):  # fmt: skip
        self.config = make_config(
            "Gelu", method, nngp_dim, step_dim, sketch_dim, degree, tol
        )
        self.projections = None

    @property
    def network_layer(self) -> smooth.Gelu:
        return smooth.Gelu()

    def coefficients(self, q: Array, degree: int) -> tuple[Array, Array]:
        return gelu_coefficients(q, degree)


class Sin(AbstractActivationFeatures):
    r"""Features of $\sigma(x) = a\sin(bx + c)$ (mirrors `et.Sin`); the Hermite
    coefficients are in closed form (`sin_coefficients`). Arguments `a`, `b`,

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> act = et.features.Sin(nngp_dim=4096, sketch_dim=4096)
    >>> fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), et.Sin())
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> relative_error(nngp, k.nngp) < 0.05, relative_error(ntk, k.ntk) < 0.05
    (True, True)
    ```
    `c`, then those of `AbstractActivationFeatures`."""

    a: float = eqx.field(static=True)
    b: float = eqx.field(static=True)
    c: float = eqx.field(static=True)
    config: Config = eqx.field(static=True)
    projections: Projections | None

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0,
                 method: Method = "poly_sketch", *, nngp_dim: int = 1024,
                 step_dim: int | None = None, sketch_dim: int | None = 1024,
                 degree: int = 8, tol: float = 0.05):  # fmt: skip
        layer = mirror(exponential.Sin, a, b, c)
        self.a, self.b, self.c = layer.a, layer.b, layer.c
        self.config = make_config(
            "Sin", method, nngp_dim, step_dim, sketch_dim, degree, tol
        )
        self.projections = None

    @property
    def network_layer(self) -> exponential.Sin:
        return exponential.Sin(self.a, self.b, self.c)

    def coefficients(self, q: Array, degree: int) -> tuple[Array, Array]:
        return sin_coefficients(self.a, self.b, self.c, q, degree)


class ElementwiseNumerical(AbstractActivationFeatures):
    r"""Features of any elementwise $\sigma$ (mirrors `et.ElementwiseNumerical`).

    The Hermite coefficients come from `QUADRATURE_NODES`-point Gauss-Hermite
    quadrature of $\sigma(\sqrt q z) h_k(z)$ per example (no fitting: the layer
    initialises in milliseconds); the exact duals, for `method="exact"` and the
    truncation check, are those of `et.ElementwiseNumerical(fn, deg, df)`.
    Quadrature converges fast for smooth $\sigma$, slowly at kinks: prefer a
    closed-form layer where one exists. Arguments `fn`, `deg`, `df` as in
    `et.ElementwiseNumerical`, then those of `AbstractActivationFeatures`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> act = et.features.ElementwiseNumerical(
    ...     jnp.tanh, deg=25, nngp_dim=4096, sketch_dim=4096
    ... )
    >>> fmodel = et.features.Serial(et.features.Dense(W_std=1.5, b_std=0.1), act)
    >>> fmodel = fmodel.init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> tanh = et.ElementwiseNumerical(jnp.tanh, deg=25)
    >>> k = et.Serial(et.Dense(1, W_std=1.5, b_std=0.1), tanh)
    >>> k = k.kernel(x, None)
    >>> def relative_error(a, b):
    ...     return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    >>> relative_error(nngp, k.nngp) < 0.05, relative_error(ntk, k.ntk) < 0.05
    (True, True)
    ```
    """

    config: Config = eqx.field(static=True)
    projections: Projections | None
    # Class-level defaults only stand in for the method `fn` it replaces;
    # `__init__` always sets them.
    fn: Callable[[Array], Array] = eqx.field(static=True, default=None)
    deg: int = eqx.field(static=True, default=1)
    df: Callable[[Array], Array] | None = eqx.field(static=True, default=None)

    def __init__(self, fn: Callable[[Array], Array], deg: int,
                 df: Callable[[Array], Array] | None = None,
                 method: Method = "poly_sketch", *, nngp_dim: int = 1024,
                 step_dim: int | None = None, sketch_dim: int | None = 1024,
                 degree: int = 8, tol: float = 0.05):  # fmt: skip
        layer = mirror(numerical.ElementwiseNumerical, fn, deg, df)
        self.fn, self.deg, self.df = layer.fn, layer.deg, layer.df
        self.config = make_config(
            "ElementwiseNumerical", method, nngp_dim, step_dim, sketch_dim, degree, tol
        )
        self.projections = None

    @property
    def network_layer(self) -> numerical.ElementwiseNumerical:
        return numerical.ElementwiseNumerical(self.fn, self.deg, self.df)

    def dfn(self, x: Array) -> Array:
        return (numerical.derivative_of(self.fn) if self.df is None else self.df)(x)

    def coefficients(self, q: Array, degree: int) -> tuple[Array, Array]:
        return (
            quadrature_coefficients(self.fn, q, degree),
            quadrature_coefficients(self.dfn, q, degree),
        )
