"""`AbstractActivation`: the shared kernel rule of pointwise nonlinearities."""

from __future__ import annotations

import abc

import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Shape, as_shape, require_gaussian
from .._numerics import safe_sqrt


class AbstractActivation(AbstractLayer):
    r"""A pointwise nonlinearity $\phi$ with a dual kernel.

    For Gaussian inputs $(u, v)$ with covariance $\begin{pmatrix} v_1 & c_{12}
    \\ c_{12} & v_2 \end{pmatrix}$ the output NNGP is the dual activation
    $T(c_{12}, v_1, v_2) = E[\phi(u)\phi(v)]$ and the NTK is multiplied by the
    dual of the derivative $\dot T = E[\phi'(u)\phi'(v)]$:

    $$K' = T(K), \qquad \Theta' = \dot T(K)\, \Theta.$$

    Subclasses give `fn` (the forward pass) and `duals`.

    **Example:**

    ```pycon
    >>> class Doubled(et.AbstractActivation):        # phi(x) = 2 x
    ...     def fn(self, x):
    ...         return 2 * x
    ...     def duals(self, c12, v1, v2, derivative):
    ...         return 4 * c12, (4 * jnp.ones_like(c12) if derivative else None)
    >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    >>> k = et.Serial(et.Dense(1), Doubled()).kernel(x, None)
    >>> print(np.round(k.nngp, 4))                    # 4 x x^T / 2
    [[2.  1.2]
     [1.2 2. ]]
    ```
    """

    @abc.abstractmethod
    def fn(self, x: Array) -> Array:
        """The nonlinearity, elementwise."""

    @abc.abstractmethod
    def duals(
        self, c12: Array, v1: Array, v2: Array, derivative: bool
    ) -> tuple[Array, Array | None]:
        r"""Returns $T(c_{12}, v_1, v_2)$ and, if `derivative`, $\dot T$."""

    def self_dual(self, v: Array) -> Array:
        r"""$T(v, v, v) = E[\phi(u)^2]$ for $u \sim N(0, v)$: the output variance.

        By default `duals` at $c_{12} = v_1 = v_2 = v$; subclasses with a closed
        form override it, which keeps the per-example variance chain short.
        """
        return self.duals(v, v, v, False)[0]

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        return self.fn(x)

    def output_shape(self, input_shape: Shape) -> Shape:
        return as_shape(input_shape, self)

    def propagate(self, k: Kernel) -> Kernel:
        require_gaussian(self, k)
        v1, v2 = k.variances()
        # Cauchy-Schwarz, |c12| <= sqrt(v1 v2), against rounding: for identical
        # inputs in a chaotic network the excess would grow layer by layer. The
        # bound is a product of roots (a root of the (N1, N2) product makes XLA
        # recompute the variance chain inside every layer's fusion), and two
        # rounded roots can land an ulp below v1 = v2, which would push an
        # identical pair below rho = 1 and let chaos decorrelate it; a few ulps
        # of slack keep such pairs at rho = 1, where every dual saturates.
        slack = 1 + 4 * jnp.finfo(k.nngp.dtype).eps
        bound = safe_sqrt(v1) * safe_sqrt(v2) * slack
        nngp, dot = self.duals(
            jnp.clip(k.nngp, -bound, bound), v1, v2, k.ntk is not None
        )
        ntk = None if k.ntk is None else k.ntk * dot

        def cov(c):
            if c is None:
                return None
            if k.diagonal_spatial or k.n_spatial == 0:  # `c` holds variances
                return self.self_dual(c)
            return self.duals(c, *k.cov_variances(c), False)[0]

        cov1 = cov(k.cov1)
        if k.cov2 is None and not k.diagonal_batch:
            nngp = _with_batch_diagonal(nngp, cov1)
        return k.replace(
            nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov(k.cov2), is_gaussian=False
        )


def _with_batch_diagonal(nngp: Array, cov: Array) -> Array:
    r"""`nngp` with its batch diagonal `nngp[n, n]` replaced by `cov[n]`.

    With `x2=None` the two are the same number, computed twice: by the dual at
    $c_{12} = v$ and by `self_dual`. In the chaotic phase $\rho = 1$ is an
    unstable fixed point of the correlation map, so the rounding difference
    between them grows by the factor $\chi > 1$ per layer until, some 50
    layers on, the diagonal leaves the Cauchy-Schwarz bound and the NTK
    overflows. Resetting the diagonal after every activation keeps it exact.
    """
    n = jnp.arange(cov.shape[0])
    return nngp.at[n, n].set(cov.astype(nngp.dtype))
