r"""Feature maps of infinitely wide networks: `Features` and the feature layers.

A feature layer maps feature matrices $\Phi$ (NNGP) and $\Psi$ (NTK) of a batch,
with $K \approx \Phi\Phi^\top$ and $\Theta \approx \Psi\Psi^\top$, to those of
the next layer of the network it mirrors. Random projections are fields of the
layer, drawn by `init(key, input_shape)`, so every batch embedded by one
initialised layer shares one sketch.

**Example:**

```python
fmodel = et.features.Serial(
    et.features.Dense(W_std=1.5, b_std=0.05), et.features.Relu(),
    et.features.Dense(W_std=1.5, b_std=0.05),
).init(key, x_train.shape[1:])
f_train = fmodel(et.features.Features.from_inputs(x_train))
f_test = fmodel(et.features.Features.from_inputs(x_test))
ntk_test_train = f_test.ntk_feat @ f_train.ntk_feat.T
```
"""

from __future__ import annotations

import abc
import collections
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._kernel import Get, parse_get
from .._layers._affine import check_parameterization, to_std
from .._typing import Scalar


class FeatureShape(NamedTuple):
    """Per-example sizes of the features at one point of a network.

    - `nngp`, `ntk`: the widths of the NNGP and NTK feature vectors; `None` after
      an exact layer, whose features have one column per example of the batch.
    - `width`: the channel count of the network there (the fan-in of the next
      `Dense`, needed by the standard parameterization), or `None` if unknown.
    - `spatial`: the spatial shape of the network there, `()` for flat
      features.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(et.features.Dense(b_std=0.1), et.features.Relu(
    ...     nngp_dim=256, sketch_dim=128))
    >>> fmodel.output_shape((4,))
    FeatureShape(nngp=256, ntk=128, width=None, spatial=())
    ```
    """

    nngp: int | None
    ntk: int | None
    width: int | None
    spatial: tuple[int, ...] = ()


class Features(eqx.Module):
    r"""Feature matrices of a batch: $K \approx \Phi\Phi^\top$, $\Theta \approx
    \Psi\Psi^\top$.

    Features are laid out `(N, *spatial, d)`: one feature vector per example and
    spatial position, features last (the network's channels are the infinite
    axis, replaced by the `d` features). For images,
    `nngp[n1, n2, s, s'] = <nngp_feat[n1, s], nngp_feat[n2, s']>`.

    **Fields:**

    - `nngp_feat`: $\Phi$, `(N, *spatial, d_nngp)`.
    - `ntk_feat`: $\Psi$, `(N, *spatial, d_ntk)` (no columns at the inputs,
      where the NTK is zero).
    - `pattern`: the graph adjacency of each example, `(N, V, V)`, read by
      `features.Aggregate`; `None` without graphs.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))   # (N, C, H, W)
    >>> f = et.features.Features.from_inputs(x)          # features last
    >>> f.nngp_feat.shape, f.ntk_feat.shape
    ((2, 6, 6, 3), (2, 6, 6, 0))
    >>> nngp = et.features.kernel(f, get="nngp")  # <phi[n1, s], phi[n2, s']>
    >>> bool(jnp.allclose(nngp, et.Identity().kernel(x, None, "nngp")))
    True
    ```
    """

    nngp_feat: Float[Array, "n *spatial d_nngp"]
    ntk_feat: Float[Array, "n *spatial d_ntk"]
    pattern: Float[Array, "n v v"] | None = None

    @classmethod
    def from_inputs(
        cls,
        x: Float[Array, "n c *spatial"],
        pattern: Float[Array, "n v v"] | None = None,
    ) -> Features:
        r"""The features of network inputs `(N, C, *spatial)` (channels first, as
        for `model.kernel`): $\Phi_s = x_{:, s} / \sqrt{C}$ at each position $s$,
        so that $\Phi\Phi^\top = x x^\top / C$ is the input kernel, and $\Psi$
        empty. `pattern` is the graph adjacency of each example, if any."""
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(float))
        if x.ndim < 2:
            raise ValueError(
                f"Features.from_inputs: `x` has shape {x.shape}; give a batch "
                "`(N, C, *spatial)`, e.g. `x[None]` for one example."
            )
        nngp = jnp.moveaxis(x, 1, -1) / jnp.sqrt(x.shape[1]).astype(x.dtype)
        if pattern is not None:
            pattern = jnp.asarray(pattern, x.dtype)
        return cls(
            nngp_feat=nngp,
            ntk_feat=jnp.zeros(nngp.shape[:-1] + (0,), x.dtype),
            pattern=pattern,
        )

    @property
    def shape(self) -> FeatureShape:
        """The feature widths and spatial shape (the width is not recorded)."""
        return FeatureShape(
            self.nngp_feat.shape[-1],
            self.ntk_feat.shape[-1],
            None,
            tuple(self.nngp_feat.shape[1:-1]),
        )

    def replace(self, nngp_feat, ntk_feat) -> Features:
        """The same batch (and graph pattern) with new feature matrices."""
        return Features(nngp_feat=nngp_feat, ntk_feat=ntk_feat, pattern=self.pattern)


def gram(a: Float[Array, "n1 *s d"], b: Float[Array, "n2 *s d"]) -> Array:
    """Inner products of features in the layout of `et.Kernel`: `(N1, N2)` for
    flat features, `(N1, N2, S_1, S_1', ..., S_d, S_d')` for spatial ones."""
    n_spatial = a.ndim - 2
    if n_spatial == 0:
        return a @ b.T
    letters = "ghijklmopqrstuvw"
    left = letters[:n_spatial]
    right = letters[n_spatial : 2 * n_spatial]
    out = "".join(x + y for x, y in zip(left, right))
    return jnp.einsum(f"a{left}z,b{right}z->ab{out}", a, b)


def kernel(f1: Features, f2: Features | None = None, get: Get = None):
    r"""The kernels of two embedded batches, $\Phi_1\Phi_2^\top$ and
    $\Psi_1\Psi_2^\top$, laid out as `et.Kernel`'s (full spatial covariance
    for spatial features).

    **Arguments:**

    - `f1`, `f2`: features of the two batches (`f2=None` means `f1`).
    - `get`: `"nngp"`, `"ntk"`, a tuple of them, or `None` for both.

    **Returns:** one array for a string, else a named tuple `(nngp, ntk)` (in the
    order asked for). Only the kernels asked for are computed.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> f = et.features.Dense(b_std=0.1)(et.features.Features.from_inputs(x))
    >>> nngp = et.features.kernel(f, get="nngp")
    >>> bool(jnp.allclose(nngp, f.nngp_feat @ f.nngp_feat.T))
    True
    >>> ntk, nngp = et.features.kernel(f, f, get=("ntk", "nngp"))   # in the order asked
    >>> ntk.shape
    (3, 3)
    ```
    """
    f2 = f1 if f2 is None else f2
    names, _ = parse_get(get)
    if len(set(names)) != len(names):
        raise ValueError(f"features.kernel: `get={get!r}` names a kernel twice.")
    computed = {
        name: gram(getattr(f1, f"{name}_feat"), getattr(f2, f"{name}_feat"))
        for name in names
    }
    if isinstance(get, str):
        return computed[get]
    return _KERNELS[names](*(computed[name] for name in names))


_KERNELS = {
    names: collections.namedtuple("Kernels", names)
    for names in [("nngp",), ("ntk",), ("nngp", "ntk"), ("ntk", "nngp")]
}


class AbstractFeatureLayer(eqx.Module):
    """A layer mapping the `Features` of its inputs to those of its outputs.

    Final subclasses give `__call__(f)`, `init(key, input_shape)` (a copy with
    its random projections drawn) and `output_shape(input_shape)`. Input shapes
    are `FeatureShape`s, or at the start of a network the per-example shape
    `(C, *spatial)` of its inputs.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> layer = et.features.Relu(nngp_dim=64, sketch_dim=32)
    >>> isinstance(layer, et.features.AbstractFeatureLayer)
    True
    >>> ready = layer.init(jax.random.key(1), et.features.Dense().output_shape((4,)))
    >>> f = et.features.Dense()(et.features.Features.from_inputs(x))
    >>> ready(f).nngp_feat.shape, ready(f).ntk_feat.shape
    ((3, 64), (3, 32))
    ```
    """

    @abc.abstractmethod
    def __call__(
        self, f: Features | tuple[Features, ...]
    ) -> Features | tuple[Features, ...]:
        """Maps the features of a batch forward."""

    @abc.abstractmethod
    def output_shape(self, input_shape) -> FeatureShape:
        """Feature widths after the layer; validates the input."""

    def init(self, key: PRNGKeyArray, input_shape) -> AbstractFeatureLayer:
        """A copy with its random projections drawn (this one has none)."""
        self.output_shape(input_shape)
        return self


def as_feature_shape(input_shape, layer) -> FeatureShape:
    """A `FeatureShape`, also from the per-example network input shape
    `(C, *spatial)`."""
    if isinstance(input_shape, FeatureShape):
        return input_shape
    shape = tuple(input_shape)
    if len(shape) < 1 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"features.{type(layer).__name__}: expected a `FeatureShape` or the "
            f"per-example shape `(C, *spatial)` of the network inputs, got "
            f"{input_shape!r}."
        )
    return FeatureShape(shape[0], 0, shape[0], shape[1:])


def missing_projections(layer) -> ValueError:
    return ValueError(
        f"features.{type(layer).__name__} has no random projections yet: call "
        "`layer.init(key, input_shape)` first, and embed every batch with the "
        "returned layer so that they share one sketch."
    )


class Dense(AbstractFeatureLayer):
    r"""Features of a fully connected layer (exact: no randomness). On spatial
    features it acts at each position, like a 1x1 convolution.

    With $K = \Phi\Phi^\top$ and $\Theta = \Psi\Psi^\top$ the layer's kernels are
    $K' = \sigma_w^2 K + \sigma_b^2$ and $\Theta' = K' + \sigma_w^2\Theta$ (ntk
    parameterization) or $\Theta' = C K + 1 + \sigma_w^2\Theta$ (standard, with
    fan-in $C$), so

    $$\Phi' = [\sigma_w \Phi,\ \sigma_b \mathbf 1], \qquad
      \Psi' = [\Phi',\ \sigma_w \Psi] \;\text{(ntk)}, \qquad
      \Psi' = [\sqrt{C}\,\Phi,\ \mathbf 1,\ \sigma_w \Psi] \;\text{(standard)},$$

    the bias columns dropped when `b_std=None`.

    **Arguments:**

    - `W_std`, `b_std`, `parameterization`: as in `et.Dense`.
    - `out_features`: the width of the network layer; only needed when the next
      `Dense` uses the standard parameterization (its fan-in).
    - `fan_in`: the width of the layer's inputs, used by the standard
      parameterization; `init` sets it from the input shape.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.Dense(W_std=1.5, b_std=0.1),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Dense(1, W_std=1.5, b_std=0.1),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    W_std: Float[Array, ""] | float
    b_std: Float[Array, ""] | float | None
    parameterization: Literal["ntk", "standard"] = eqx.field(static=True)
    out_features: int | None = eqx.field(static=True)
    fan_in: int | None = eqx.field(static=True)

    def __init__(
        self,
        W_std: Scalar = 1.0,
        b_std: Scalar | None = None,
        parameterization: Literal["ntk", "standard"] = "ntk",
        *,
        out_features: int | None = None,
        fan_in: int | None = None,
    ):
        check_parameterization("features.Dense", parameterization)
        self.W_std = to_std(W_std, "W_std", "features.Dense")
        self.b_std = None if b_std is None else to_std(b_std, "b_std", "features.Dense")
        self.parameterization = parameterization
        self.out_features = out_features
        self.fan_in = fan_in

    def output_shape(self, input_shape) -> FeatureShape:
        shape = as_feature_shape(input_shape, self)
        if self.parameterization == "standard" and shape.width is None:
            raise ValueError(
                "features.Dense (standard parameterization) needs its fan-in: give "
                "`out_features=` to the `features.Dense` before it."
            )
        bias = 0 if self.b_std is None else 1
        nngp = None if shape.nngp is None else shape.nngp + bias
        ntk = None
        if nngp is not None and shape.ntk is not None:
            ntk = nngp + shape.ntk
        return FeatureShape(nngp, ntk, self.out_features, shape.spatial)

    def init(self, key: PRNGKeyArray, input_shape) -> Dense:
        self.output_shape(input_shape)
        return Dense(
            self.W_std,
            self.b_std,
            self.parameterization,
            out_features=self.out_features,
            fan_in=as_feature_shape(input_shape, self).width,
        )

    def __call__(self, f: Features) -> Features:
        phi, psi = f.nngp_feat, f.ntk_feat
        dtype = phi.dtype
        ones = jnp.ones(phi.shape[:-1] + (1,), dtype)
        nngp = [self.W_std * phi]
        if self.b_std is not None:
            nngp.append(self.b_std * ones)
        if self.parameterization == "ntk":
            ntk = nngp + [self.W_std * psi]
        else:
            if self.fan_in is None:
                raise ValueError(
                    "features.Dense (standard parameterization) needs its fan-in: "
                    "call `init(key, input_shape)` first."
                )
            ntk = [jnp.sqrt(self.fan_in).astype(dtype) * phi]
            if self.b_std is not None:
                ntk.append(ones)
            ntk.append(self.W_std * psi)
        return f.replace(jnp.concatenate(nngp, axis=-1), jnp.concatenate(ntk, axis=-1))


class Serial(AbstractFeatureLayer):
    """Feature layers applied one after the other (mirrors `et.Serial`).

    **Arguments:**

    - `*layers`: the feature layers, first to last.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.Dense(),
    ...     et.features.Relu(method="exact"),
    ...     et.features.Dense(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Dense(1),
    ...     et.Relu(),
    ...     et.Dense(1),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    layers: tuple[AbstractFeatureLayer, ...]

    def __init__(self, *layers: AbstractFeatureLayer):
        for i, layer in enumerate(layers):
            if not isinstance(layer, AbstractFeatureLayer):
                raise ValueError(
                    f"features.Serial: item {i} is {type(layer).__name__}, not a "
                    "feature layer; use the layers of `et.features` (a network "
                    "layer such as `et.Dense` has the feature layer "
                    "`et.features.Dense`)."
                )
        self.layers = tuple(layers)

    def output_shape(self, input_shape) -> FeatureShape:
        shape = as_feature_shape(input_shape, self)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def init(self, key: PRNGKeyArray, input_shape) -> Serial:
        shape = as_feature_shape(input_shape, self)
        layers = []
        keys = jax.random.split(key, max(len(self.layers), 1))
        for layer, k in zip(self.layers, keys):
            layers.append(layer.init(k, shape))
            shape = layer.output_shape(shape)
        return eqx.tree_at(lambda s: s.layers, self, tuple(layers))

    def __call__(
        self, f: Features | tuple[Features, ...]
    ) -> Features | tuple[Features, ...]:
        for layer in self.layers:
            f = layer(f)
        return f


def psd_factor(a: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """`F` with `F @ F.T == a` for a symmetric PSD `a`, by eigendecomposition
    (negative eigenvalues, from rounding, clipped to zero)."""
    evals, evecs = jnp.linalg.eigh((a + a.T) / 2)
    return evecs * jnp.sqrt(jnp.maximum(evals, 0))


def exact_activation(f: Features, duals) -> Features:
    r"""Exact features after an elementwise activation, for debugging.

    Forms the Gram matrices of all `N * S` feature vectors of the batch (every
    example and position), applies `duals(nngp, var1, var2) -> (nngp', dot)`,
    the activation's dual $T$ and derivative dual $\dot T$, and factorises
    $K' = T(K)$ and $\Theta' = \dot T(K) \odot \Theta$ by `psd_factor`. The new
    features have `N * S` columns and hold only for this batch.
    """
    lead = f.nngp_feat.shape[:-1]
    phi = f.nngp_feat.reshape(-1, f.nngp_feat.shape[-1])
    psi = f.ntk_feat.reshape(-1, f.ntk_feat.shape[-1])
    nngp = phi @ phi.T
    var = jnp.diagonal(nngp)
    nngp, dot = duals(nngp, var[:, None], var[None, :])
    ntk = dot * (psi @ psi.T)
    width = phi.shape[0]
    return f.replace(
        psd_factor(nngp).reshape(lead + (width,)),
        psd_factor(ntk).reshape(lead + (width,)),
    )
