r"""Feature maps of normalization layers: `LayerNorm`."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._layers.normalization import check_axes
from ._features import AbstractFeatureLayer, Features, FeatureShape, as_feature_shape


class LayerNorm(AbstractFeatureLayer):
    r"""Features of layer normalization (mirrors `et.LayerNorm`).

    For Gaussian inputs of infinitely many channels, `et.LayerNorm` divides the
    kernels by the variances averaged over the normalised spatial axes,

    $$K'[p, p'] = \frac{K[p, p']}{\sqrt{(\bar v_1(p) + \epsilon)
      (\bar v_2(p') + \epsilon)}}, \qquad \bar v(p) = \mathrm{mean}_q K[q, q],$$

    the mean over the positions $q$ that share $p$'s coordinates off the
    normalised axes, and $\Theta$ alike. The kernel's diagonal is the squared
    norm of the NNGP features, $K[q, q] = \lVert\Phi_q\rVert^2$, so each
    example's feature vectors are rescaled,

    $$\Phi'_p = \Phi_p / \sqrt{\bar v(p) + \epsilon}, \qquad
      \Psi'_p = \Psi_p / \sqrt{\bar v(p) + \epsilon}, \qquad
      \bar v(p) = \mathrm{mean}_q \lVert\Phi_q\rVert^2.$$

    With exact features this is exact; with random features or sketches it
    normalises the approximate kernel (its diagonal becomes about 1). As for
    `et.LayerNorm`, the inputs should be the outputs of an affine layer
    (zero-mean Gaussians); the feature layer does not check it.

    **Arguments:**

    - `axis`: the per-example axes `(C, *spatial)` to normalise over, channels
      first; must include the channel axis 0 (`axis=(0, 1, 2)` normalises over
      the channels and both axes of an image).
    - `eps`: added to the variance.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.Dense(b_std=0.3),
    ...     et.features.LayerNorm(),
    ...     et.features.Dense(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Dense(1, b_std=0.3),
    ...     et.LayerNorm(),
    ...     et.Dense(1),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    axis: int | tuple[int, ...] = eqx.field(static=True)
    eps: float

    def __init__(self, axis: int | tuple[int, ...] = 0, eps: float = 1e-12):
        axes = check_axes(axis, "features.LayerNorm")
        self.axis = axes[0] if isinstance(axis, int) else axes
        eps = float(eps)
        if not eps >= 0:
            raise ValueError(
                f"features.LayerNorm: `eps` must be non-negative, got {eps}."
            )
        self.eps = eps

    def _axes(self, ndim: int) -> tuple[int, ...]:
        """The normalised per-example axes, in range and sorted."""
        raw = check_axes(self.axis, "features.LayerNorm")
        if not all(-ndim <= a < ndim for a in raw):
            raise ValueError(
                f"features.LayerNorm(axis={self.axis}) names an axis out of range "
                f"for inputs with {ndim} axes per example: axes are channels first, "
                f"0..{ndim - 1} (0 = channels); there is no batch axis."
            )
        axes = tuple(sorted({a % ndim for a in raw}))
        if len(axes) != len(raw):
            raise ValueError(f"features.LayerNorm(axis={self.axis}) repeats an axis.")
        if 0 not in axes:
            raise ValueError(
                f"features.LayerNorm(axis={self.axis}) does not normalise over the "
                "channel axis 0; its infinite-width kernel needs the channels among "
                "the normalised axes (e.g. `axis=0` or `axis=(0, 1, 2)`)."
            )
        return axes

    def output_shape(self, input_shape) -> FeatureShape:
        shape = as_feature_shape(input_shape, self)
        self._axes(len(shape.spatial) + 1)
        return shape

    def __call__(self, f: Features) -> Features:
        phi = f.nngp_feat
        axes = self._axes(phi.ndim - 1)
        # Per-example axis a >= 1 is spatial axis a - 1, array axis a of (N, *s, d).
        spatial = tuple(a for a in axes if a > 0)
        var = jnp.sum(jnp.square(phi), axis=-1, keepdims=True)
        if spatial:
            var = jnp.mean(var, axis=spatial, keepdims=True)
        scale = 1 / jnp.sqrt(var + self.eps)
        return f.replace(phi * scale, f.ntk_feat * scale)
