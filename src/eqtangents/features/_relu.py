"""Feature maps of the ReLU: arc-cosine random features and exact factors."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._layers.relu import abrelu_duals
from ._features import (
    AbstractFeatureLayer,
    Features,
    FeatureShape,
    as_feature_shape,
    exact_activation,
    missing_projections,
)
from ._sketch import TensorSRHT


class Relu(AbstractFeatureLayer):
    r"""Features of $\phi(x) = \max(x, 0)$.

    The layer's kernels are $K' = T(K)$ and $\Theta' = \dot T(K) \odot \Theta$,
    with $T$, $\dot T$ the arc-cosine kernels of order 1 and 0 (Cho & Saul 2009).

    `method="random_features"` (Zandieh et al. 2021, "Scaling Neural Tangent
    Kernels via Sketching and Random Features"): with Gaussian matrices
    $W_1 \in \mathbb R^{m_1 \times d}$, $W_0 \in \mathbb R^{m_0 \times d}$,

    $$\Phi' = \tfrac{1}{\sqrt{m_1}} \max(\Phi W_1^\top, 0), \qquad
      \Phi_0 = \tfrac{1}{\sqrt{m_0}} [\Phi W_0^\top > 0], \qquad
      \Psi' = S(\Phi_0 \otimes \Psi),$$

    row by row, where $S$ is a `TensorSRHT` to `sketch_dim` columns (or the
    explicit tensor product, $m_0 d_\Psi$ columns, when `sketch_dim=None`). As
    $w^\top\phi(x) \sim N(0, K)$ jointly over examples, $E[\Phi'\Phi'^\top] = T(K)$
    and $E[\Phi_0\Phi_0^\top] = \dot T(K)$; the tensor sketch turns the Hadamard
    product into an inner product, $E[\Psi'\Psi'^\top] = \dot T(K) \odot \Theta$.
    Errors fall like $1/\sqrt m$.

    `method="exact"` (for debugging): forms $K' $ and $\Theta'$ of the batch from
    the incoming features and factorises them by an eigendecomposition,
    $\Phi' = V\Lambda^{1/2}$ with negative eigenvalues clipped. It costs
    $O(N^3)$ and its features have one column per example: they hold only for
    the batch they were computed from, so embed train and test data together.

    **Arguments:**

    - `method`: `"random_features"` or `"exact"`.
    - `nngp_dim`, `step_dim`, `sketch_dim`: $m_1$, $m_0$ and the width of the NTK
      sketch (random features only).
    """

    method: Literal["random_features", "exact"] = eqx.field(static=True)
    nngp_dim: int = eqx.field(static=True)
    step_dim: int = eqx.field(static=True)
    sketch_dim: int | None = eqx.field(static=True)
    nngp_proj: Float[Array, "m1 d"] | None
    step_proj: Float[Array, "m0 d"] | None
    tensor: TensorSRHT | None

    def __init__(
        self,
        method: Literal["random_features", "exact"] = "random_features",
        *,
        nngp_dim: int = 1024,
        step_dim: int = 1024,
        sketch_dim: int | None = 1024,
    ):
        if method not in ("random_features", "exact"):
            raise ValueError(
                "features.Relu: `method` must be 'random_features' or 'exact', got "
                f"{method!r}."
            )
        for name, value in (("nngp_dim", nngp_dim), ("step_dim", step_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"features.Relu: `{name}` must be a positive int, got {value!r}."
                )
        if sketch_dim is not None and (
            not isinstance(sketch_dim, int) or sketch_dim <= 0
        ):
            raise ValueError(
                "features.Relu: `sketch_dim` must be a positive int or None (the "
                f"explicit tensor product), got {sketch_dim!r}."
            )
        self.method = method
        self.nngp_dim, self.step_dim, self.sketch_dim = nngp_dim, step_dim, sketch_dim
        self.nngp_proj = self.step_proj = self.tensor = None

    def output_shape(self, input_shape) -> FeatureShape:
        shape = as_feature_shape(input_shape, self)
        if self.method == "exact":
            return FeatureShape(None, None, shape.width, shape.spatial)
        if shape.nngp is None or shape.ntk is None:
            raise ValueError(
                "features.Relu(method='random_features') follows an exact feature "
                "layer, whose width depends on the batch; use `method='exact'` "
                "throughout, or random features throughout."
            )
        if shape.ntk == 0:
            ntk = 0
        elif self.sketch_dim is None:
            ntk = self.step_dim * shape.ntk
        else:
            ntk = self.sketch_dim
        return FeatureShape(self.nngp_dim, ntk, shape.width, shape.spatial)

    def init(self, key: PRNGKeyArray, input_shape) -> Relu:
        self.output_shape(input_shape)
        if self.method == "exact":
            return self
        shape = as_feature_shape(input_shape, self)
        k1, k0, kt = jax.random.split(key, 3)
        nngp_proj = jax.random.normal(k1, (self.nngp_dim, shape.nngp))
        step_proj = jax.random.normal(k0, (self.step_dim, shape.nngp))
        tensor = None
        if self.sketch_dim is not None and shape.ntk > 0:
            tensor = TensorSRHT(self.step_dim, shape.ntk, self.sketch_dim, key=kt)
        return eqx.tree_at(
            lambda r: (r.nngp_proj, r.step_proj, r.tensor),
            self,
            (nngp_proj, step_proj, tensor),
            is_leaf=_is_none,
        )

    def __call__(self, f: Features) -> Features:
        if self.method == "exact":
            return _exact_relu(f)
        if self.nngp_proj is None or self.step_proj is None:
            raise missing_projections(self)
        phi, psi = f.nngp_feat, f.ntk_feat
        if phi.shape[-1] != self.nngp_proj.shape[1]:
            raise ValueError(
                f"features.Relu was initialised for NNGP features of width "
                f"{self.nngp_proj.shape[1]} but got {phi.shape[-1]}; call `init` "
                "with the input shape of this layer."
            )
        dtype = phi.dtype
        z1 = phi @ self.nngp_proj.T.astype(dtype)
        z0 = phi @ self.step_proj.T.astype(dtype)
        nngp = jnp.maximum(z1, 0) / jnp.sqrt(self.nngp_dim).astype(dtype)
        step = (z0 > 0).astype(dtype) / jnp.sqrt(self.step_dim).astype(dtype)
        lead = phi.shape[:-1]
        if psi.shape[-1] == 0:
            ntk = jnp.zeros(lead + (0,), dtype)
        elif self.tensor is not None:
            ntk = self.tensor(step, psi)
        else:
            ntk = (step[..., :, None] * psi[..., None, :]).reshape(lead + (-1,))
        return f.replace(nngp, ntk)


def _exact_relu(f: Features) -> Features:
    def duals(nngp, var1, var2):
        return abrelu_duals(0.0, 1.0, nngp, var1, var2, True)

    return exact_activation(f, duals)


def _is_none(x):
    return x is None
