r"""Normalization layers."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._kernel import Kernel, outer_layout
from .._layer import AbstractLayer, Shape, as_shape, require_gaussian
from .._mask import check_mask, side2


def check_axes(axis, where: str = "LayerNorm") -> tuple[int, ...]:
    """`axis` as a non-empty tuple of ints; `where` names the layer in errors."""
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    if len(axes) == 0 or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in axes
    ):
        raise ValueError(
            f"{where}: `axis` must be an integer or a non-empty tuple of integers "
            f"(per-example axes, 0 = channels), got {axis!r}."
        )
    return tuple(axes)


class LayerNorm(AbstractLayer):
    r"""Layer normalization of one example over some of its axes.

    $y = (x - \mu) / \sqrt{\sigma^2 + \epsilon}$, with $\mu$ and $\sigma^2$ the
    mean and (biased) variance of $x$ over the axes in `axis`, per example.
    Axes are per example and channels first: `axis=0` normalizes over the
    channels at each position, `axis=(0, 1, 2)` over channels and both axes of
    an image. (Neural Tangents' axes refer to its batch layout
    `(N, *spatial, C)`: its channel axis `-1` is axis 0 here, its spatial axis
    `i` is axis `i`.)

    For Gaussian inputs of infinitely many channels the mean over the channels
    vanishes and the variance is the covariance's spatial diagonal averaged over
    the normalized spatial axes, $\bar v(p) = \mathrm{mean}_{q} K[q, q]$ over
    the positions $q$ that share $p$'s coordinates on the other axes. Then

    $$K'[p, p'] = \frac{K[p, p']}{\sqrt{(\bar v_1(p) + \epsilon)
      (\bar v_2(p') + \epsilon)}},$$

    and the same for $\Theta$. The outputs stay Gaussian. Only the spatial
    diagonal of the input covariance enters the scale, so the layer works on
    either layout.

    With masks (`mask_constant`, or `mask=` in the forward pass, `True` at the
    padded positions of the example) the statistics run over the unmasked
    positions alone, as in Neural Tangents: $\mu$ and $\sigma^2$ in the forward
    pass, and $\bar v(p)$, the mean of $K[q, q]$ over the unmasked $q$, in the
    kernel.

    **Arguments:**

    - `axis`: the per-example axes to normalize over; must include the channel
      axis 0.
    - `eps`: added to the variance.

    **Example:**

    ```pycon
    >>> scales = jnp.array([[1.0], [5.0], [0.1]])
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) * scales
    >>> k = et.Serial(et.Dense(1), et.LayerNorm()).kernel(x, None, "nngp")
    >>> print(np.round(np.diag(k), 6))                       # unit variances ...
    [1. 1. 1.]
    >>> cosine = x[0] @ x[1] / jnp.linalg.norm(x[0]) / jnp.linalg.norm(x[1])
    >>> bool(jnp.isclose(k[0, 1], cosine))                   # ... and correlations
    True
    ```
    """

    axis: int | tuple[int, ...] = eqx.field(static=True)
    eps: float
    call_keywords = frozenset({"mask"})

    def __init__(self, axis: int | tuple[int, ...] = 0, eps: float = 1e-12):
        axes = check_axes(axis)
        self.axis = axes[0] if isinstance(axis, int) else axes
        eps = float(eps)
        if not eps >= 0:
            raise ValueError(f"LayerNorm: `eps` must be non-negative, got {eps}.")
        self.eps = eps

    def _axes(self, shape: Shape) -> tuple[int, ...]:
        """The normalized axes, in range and sorted."""
        ndim = len(shape)
        raw = check_axes(self.axis)
        if not all(-ndim <= a < ndim for a in raw):
            raise ValueError(
                f"LayerNorm(axis={self.axis}) names an axis out of range for its "
                f"input {shape}: axes are per example and channels first, "
                f"0..{ndim - 1} (0 = channels); there is no batch axis."
            )
        axes = tuple(sorted({a % ndim for a in raw}))
        if len(axes) != len(raw):
            raise ValueError(f"LayerNorm(axis={self.axis}) repeats an axis.")
        return axes

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = as_shape(input_shape, self)
        self._axes(shape)
        return shape

    def __call__(
        self,
        x: Float[Array, "c *spatial"],
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Float[Array, "c *spatial"]:
        axes = self._axes(x.shape)
        if mask is None:
            mean = jnp.mean(x, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
            return (x - mean) / jnp.sqrt(var + self.eps)
        keep = jnp.broadcast_to(~check_mask("LayerNorm", mask, x.shape), x.shape)
        keep = keep.astype(x.dtype)
        count = jnp.maximum(jnp.sum(keep, axis=axes, keepdims=True), 1)
        mean = jnp.sum(x * keep, axis=axes, keepdims=True) / count
        var = jnp.sum(jnp.square((x - mean) * keep), axis=axes, keepdims=True)
        return (x - mean) / jnp.sqrt(var / count + self.eps)

    def propagate(self, k: Kernel) -> Kernel:
        axes = self._axes(self.output_shape(k.shape1))
        if 0 not in axes:
            raise ValueError(
                f"LayerNorm(axis={self.axis}) does not normalize over the channel "
                "axis 0; its infinite-width kernel needs the channels among the "
                "normalized axes (e.g. `axis=0` or `axis=(0, 1, 2)`)."
            )
        require_gaussian(self, k)
        # Positions of the normalized spatial axes in a spatial diagonal (n, *s).
        spatial = tuple(a for a in axes if a > 0)

        def scale(cov, mask):
            v = k.diagonal_of_cov(cov)
            if mask is None:
                return jnp.mean(v, axis=spatial, keepdims=True) + self.eps
            keep = (~mask).astype(v.dtype)
            count = jnp.maximum(jnp.sum(keep, axis=spatial, keepdims=True), 1)
            return jnp.sum(v * keep, axis=spatial, keepdims=True) / count + self.eps

        v1 = scale(k.cov1, k.mask1)
        v2 = v1 if k.cov2 is None else scale(k.cov2, side2(k))
        left, right = outer_layout(v1, v2, k.diagonal_spatial)
        cross = jnp.sqrt(left * right)

        def own(cov, v):
            if k.diagonal_spatial:
                return cov / v
            n = v.shape[0]
            a = v.reshape((n,) + sum(((s, 1) for s in v.shape[1:]), ()))
            b = v.reshape((n,) + sum(((1, s) for s in v.shape[1:]), ()))
            return cov / jnp.sqrt(a * b)

        return k.replace(
            nngp=k.nngp / cross,
            ntk=None if k.ntk is None else k.ntk / cross,
            cov1=own(k.cov1, v1),
            cov2=None if k.cov2 is None else own(k.cov2, v2),
        )
