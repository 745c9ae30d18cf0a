"""Fan-in layers: combine the branches of a `FanOut`/`Parallel` block.

Branches are assumed independent given the input, which holds when every
branch starts with its own randomly initialised layer (Dense, Conv, ...).

With masks (`mask_constant`) an output position is masked when it is masked
in every branch, as in Neural Tangents (each branch's masked positions are
zero, so they add nothing); concatenation along a spatial axis concatenates
the branches' masks.
"""

from __future__ import annotations

import functools
import operator

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Layout
from .combinators import check_branches


def _check_kernels(layer: AbstractLayer, ks) -> tuple[Kernel, ...]:
    if isinstance(ks, Kernel):
        raise ValueError(
            f"{type(layer).__name__} combines several branches but received one "
            "kernel; use FanOut and Parallel before it."
        )
    return tuple(ks)


def _all_branches(masks):
    """A position is masked when it is masked in every branch (a branch
    without a mask masks nothing)."""
    if any(m is None for m in masks):
        return None
    return functools.reduce(operator.and_, masks)


def _same_shapes(layer: AbstractLayer, shapes) -> None:
    check_branches(layer, shapes)
    if any(s != shapes[0] for s in shapes):
        raise ValueError(
            f"{type(layer).__name__}: branches have different shapes {list(shapes)}; "
            "make every branch output the same shape (for example with a Dense or "
            "Conv of the same width), or use FanInConcat."
        )


class FanInSum(AbstractLayer):
    r"""Sum of the branches: $K = \sum_i K_i$, $\Theta = \sum_i \Theta_i$.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> two = et.Parallel(et.Dense(1), et.Dense(1, W_std=2.0))
    >>> k = et.Serial(et.FanOut(2), two, et.FanInSum()).kernel(x, None, "nngp")
    >>> bool(jnp.allclose(k, (1 + 4) * x @ x.T / 4))
    True
    ```
    """

    def __call__(self, x, *, key: PRNGKeyArray | None = None):
        return functools.reduce(operator.add, x)

    def output_shape(self, input_shape):
        _same_shapes(self, input_shape)
        return input_shape[0]

    def output_mask(self, mask, input_shape):
        return _all_branches(mask)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return output_full

    def propagate(self, ks) -> Kernel:
        ks = _check_kernels(self, ks)
        _same_shapes(self, tuple(k.shape1 for k in ks))

        def total(name):
            values = [getattr(k, name) for k in ks]
            return None if values[0] is None else functools.reduce(operator.add, values)

        return ks[0].replace(
            nngp=total("nngp"),
            ntk=total("ntk"),
            cov1=total("cov1"),
            cov2=total("cov2"),
            is_gaussian=all(k.is_gaussian for k in ks),
            is_input=all(k.is_input for k in ks),
        )


class FanInProd(AbstractLayer):
    r"""Elementwise product of the branches.

    For independent branches $K = \prod_i K_i$ and, by the product rule,
    $\Theta = \sum_i \Theta_i \prod_{j \ne i} K_j$.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> two = et.Parallel(et.Dense(1), et.Dense(1, W_std=2.0))
    >>> k = et.Serial(et.FanOut(2), two, et.FanInProd()).kernel(x, None, "nngp")
    >>> bool(jnp.allclose(k, 4 * (x @ x.T / 4) ** 2))
    True
    ```
    """

    def __call__(self, x, *, key: PRNGKeyArray | None = None):
        return functools.reduce(operator.mul, x)

    def output_shape(self, input_shape):
        _same_shapes(self, input_shape)
        return input_shape[0]

    def output_mask(self, mask, input_shape):
        return _all_branches(mask)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return output_full

    def propagate(self, ks) -> Kernel:
        ks = _check_kernels(self, ks)
        _same_shapes(self, tuple(k.shape1 for k in ks))

        def product(values):
            return None if values[0] is None else functools.reduce(operator.mul, values)

        nngps = [k.nngp for k in ks]
        ntk = None
        if ks[0].ntk is not None:
            ntk = sum(
                k.ntk * product(nngps[:i] + nngps[i + 1 :]) if len(ks) > 1 else k.ntk
                for i, k in enumerate(ks)
            )
        return ks[0].replace(
            nngp=product(nngps),
            ntk=ntk,
            cov1=product([k.cov1 for k in ks]),
            cov2=product([k.cov2 for k in ks]),
            is_gaussian=len(ks) == 1 and ks[0].is_gaussian,
            is_input=all(k.is_input for k in ks),
        )


class FanInConcat(AbstractLayer):
    r"""Concatenation of the branches along `axis` of the per-example shape.

    Along channels (`axis=0`) the kernel is the width-weighted average
    $K = \sum_i C_i K_i / \sum_i C_i$. Along a spatial axis the covariance is
    block diagonal: positions from different (independent) branches are
    uncorrelated, so all branches must be Gaussian.

    **Arguments:**

    - `axis`: axis of the per-example shape `(C, *spatial)`; `0` (or `-len`)
      is channels.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> two = et.Parallel(et.Dense(1), et.Dense(3, W_std=2.0))   # widths 1 and 3
    >>> k = et.Serial(et.FanOut(2), two, et.FanInConcat()).kernel(x, None, "nngp")
    >>> bool(jnp.allclose(k, (1 * 1 + 3 * 4) / 4 * x @ x.T / 4))
    True
    >>> two.output_shape(((4,), (4,))), et.FanInConcat().output_shape(((1,), (3,)))
    (((1,), (3,)), (4,))
    ```
    """

    axis: int = eqx.field(static=True)

    def __init__(self, axis: int = 0):
        self.axis = axis

    def _axis(self, ndim: int) -> int:
        if not -ndim <= self.axis < ndim:
            raise ValueError(
                f"FanInConcat: axis {self.axis} is out of range for inputs with "
                f"{ndim} axes per example `(C, *spatial)`."
            )
        return self.axis % ndim

    def __call__(self, x, *, key: PRNGKeyArray | None = None):
        return jnp.concatenate(x, axis=self._axis(x[0].ndim))

    def output_shape(self, input_shape):
        check_branches(self, input_shape)
        axis = self._axis(len(input_shape[0]))
        rest = [s[:axis] + s[axis + 1 :] for s in input_shape]
        if any(r != rest[0] for r in rest) or any(
            len(s) != len(input_shape[0]) for s in input_shape
        ):
            raise ValueError(
                f"FanInConcat(axis={self.axis}): branches have shapes "
                f"{list(input_shape)}, which differ off the concatenation axis."
            )
        s0 = input_shape[0]
        return s0[:axis] + (sum(s[axis] for s in input_shape),) + s0[axis + 1 :]

    def output_mask(self, mask, input_shape):
        axis = self._axis(len(input_shape[0]))
        if axis == 0:
            return _all_branches(mask)
        masks = [
            jnp.zeros(s[1:], bool) if m is None else m
            for m, s in zip(mask, input_shape)
        ]
        return jnp.concatenate(masks, axis=axis - 1)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return output_full

    def propagate(self, ks) -> Kernel:
        ks = _check_kernels(self, ks)
        shape1 = self.output_shape(tuple(k.shape1 for k in ks))
        shape2 = self.output_shape(tuple(k.shape2 for k in ks))
        axis = self._axis(len(ks[0].shape1))
        is_gaussian = all(k.is_gaussian for k in ks)
        if axis == 0:
            widths = [k.shape1[0] for k in ks]

            def combine(values, batch_ndim):
                return sum(w * v for w, v in zip(widths, values)) / sum(widths)

        else:
            if not is_gaussian:
                raise ValueError(
                    f"FanInConcat(axis={self.axis}) along a spatial axis needs every "
                    "branch to end in an affine layer (Dense, Conv, ...), so that "
                    "the branches are independent Gaussians."
                )
            spatial = axis - 1
            diagonal = ks[0].diagonal_spatial
            combine = functools.partial(_concat_spatial, spatial, diagonal)
        fields = {}
        for name in ("nngp", "ntk", "cov1", "cov2"):
            values = [getattr(k, name) for k in ks]
            batch_ndim = 2 if name in ("nngp", "ntk") else 1
            fields[name] = None if values[0] is None else combine(values, batch_ndim)
        return ks[0].replace(
            **fields,
            shape1=shape1,
            shape2=shape2,
            is_gaussian=is_gaussian,
            is_input=all(k.is_input for k in ks),
        )


def _concat_spatial(spatial: int, diagonal: bool, values, batch_ndim: int):
    """Concatenates covariances along spatial axis `spatial`, zero off-blocks."""
    if diagonal:
        return jnp.concatenate(values, axis=batch_ndim + spatial)
    row_axis = batch_ndim + 2 * spatial
    col_axis = row_axis + 1
    sizes = [v.shape[row_axis] for v in values]
    blocks = []
    for i, v in enumerate(values):
        pads = [(0, 0)] * v.ndim
        pads[col_axis] = (sum(sizes[:i]), sum(sizes[i + 1 :]))
        blocks.append(jnp.pad(v, pads))
    return jnp.concatenate(blocks, axis=row_axis)
