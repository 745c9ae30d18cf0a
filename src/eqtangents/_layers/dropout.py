r"""Dropout."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Shape, as_shape

Mode = Literal["train", "test"]


class Dropout(AbstractLayer):
    r"""Dropout: each entry is kept with probability `rate` and rescaled by
    `1 / rate`, or set to zero.

    `rate` is the probability to KEEP an entry, as in Neural Tangents and
    `jax.example_libraries.stax` (`rate=1` keeps everything); `equinox.nn.Dropout`
    takes the probability to drop, `p = 1 - rate`.

    The forward pass draws its mask from `key` (a fresh mask per call, so per
    example under `jax.vmap` with split keys). With `mode="test"`, or in
    inference mode (`inference=True`, e.g. through `equinox.nn.inference_mode`),
    it is the identity.

    Kernel (`mode="train"`). A mask entry $m$ has $E[m^2]/r^2 = 1/r$ and
    distinct entries are independent with $E[m]/r = 1$, so only the covariance
    of an entry with itself changes:

    $$K'[n, s; n', s'] = K[n, s; n', s'] \cdot
      \begin{cases} 1/r & n = n',\ s = s',\ \text{same forward pass} \\
      1 & \text{otherwise.} \end{cases}$$

    The per-example covariances `cov1`, `cov2` get the factor on their spatial
    diagonal, and `nngp`, `ntk` on their batch-and-spatial diagonal when the
    kernel was asked with `x2=None` (both sides see the same mask); with `x2`
    given, its examples pass through dropout separately from those of `x1`,
    and `nngp`, `ntk` are unchanged. The outputs are no longer Gaussian.

    **Arguments:**

    - `rate`: the keep probability, in $(0, 1]$.
    - `mode`: `"train"` (dropout on) or `"test"` (the identity).
    - `inference`: the identity when true (Equinox's switch, also set by
      `equinox.nn.inference_mode`); can be overridden in `__call__`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> base = et.Dense(1).kernel(x, None, "nngp")
    >>> k = et.Serial(et.Dense(1), et.Dropout(0.5)).kernel(x, None, "nngp")
    >>> bool(jnp.allclose(jnp.diag(k), jnp.diag(base) / 0.5))   # K / r on the diagonal
    True
    >>> bool(jnp.allclose(k[0, 1], base[0, 1]))                 # unchanged off it
    True
    >>> y = et.Dropout(0.5)(jnp.ones(8), key=jax.random.key(0))
    >>> sorted(set(np.asarray(y).tolist()))                      # dropped or doubled
    [0.0, 2.0]
    ```
    """

    rate: float
    mode: Mode = eqx.field(static=True)
    inference: bool

    def __init__(self, rate: float, mode: str = "train", inference: bool = False):
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)):
            raise ValueError(
                f"Dropout: `rate` must be a number in (0, 1], got {rate!r}."
            )
        rate = float(rate)
        if not 0 < rate <= 1:
            raise ValueError(
                f"Dropout: `rate` is the probability to keep an entry and must be "
                f"in (0, 1], got {rate}. (For a drop probability p use "
                "`rate=1 - p`.)"
            )
        if mode not in ("train", "test"):
            raise ValueError(
                f"Dropout: `mode` must be 'train' or 'test', got {mode!r}."
            )
        self.rate = rate
        self.mode = mode
        self.inference = bool(inference)

    def output_shape(self, input_shape: Shape) -> Shape:
        return as_shape(input_shape, self)

    def __call__(
        self,
        x: Float[Array, "c *spatial"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> Float[Array, "c *spatial"]:
        inference = self.inference if inference is None else inference
        if self.mode == "test" or inference or self.rate == 1:
            return x
        if key is None:
            raise ValueError(
                "Dropout in mode='train' needs a random key: call it with `key=` "
                "(split one key per example under `jax.vmap`), or switch dropout "
                "off with `mode='test'`, `inference=True` or "
                "`equinox.nn.inference_mode(model)`."
            )
        keep = jax.random.bernoulli(key, self.rate, x.shape)
        return jnp.where(keep, x / self.rate, jnp.zeros((), x.dtype))

    def propagate(self, k: Kernel) -> Kernel:
        self.output_shape(k.shape1)
        if self.mode == "test" or self.inference:
            return k
        if k.is_input:
            raise ValueError(
                "Dropout cannot act on the network's inputs in a kernel: the inputs "
                "have finitely many channels, so the kernel of their dropout is "
                "random. Put an affine layer (Dense, Conv, ...) before it."
            )
        factor = 1 / self.rate
        spatial = k.shape1[1:]

        # True on the spatial diagonal, in the layout of a per-example covariance.
        if k.diagonal_spatial or not spatial:
            own = np.ones(spatial, dtype=bool)
        else:
            own = np.ones((), dtype=bool)
            for s in spatial:
                own = np.multiply.outer(own, np.eye(s, dtype=bool))

        def scale(cov, mask):
            return cov * jnp.where(mask, factor, 1.0).astype(cov.dtype)

        nngp, ntk = k.nngp, k.ntk
        if k.x1_is_x2:
            n = k.nngp.shape[0]
            both = np.multiply.outer(np.eye(n, dtype=bool), own)
            nngp = scale(nngp, both)
            ntk = None if ntk is None else scale(ntk, both)
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=scale(k.cov1, own),
            cov2=None if k.cov2 is None else scale(k.cov2, own),
            is_gaussian=False,
        )
