"""The kernel rule shared by affine layers (Dense, Conv and their relatives)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array

from .._kernel import Kernel

_PARAMETERIZATIONS = ("ntk", "standard")


def check_parameterization(layer: str, parameterization: str) -> None:
    if parameterization not in _PARAMETERIZATIONS:
        raise ValueError(
            f"{layer}: `parameterization` must be 'ntk' or 'standard', "
            f"got {parameterization!r}."
        )


def to_std(value, name: str, layer: str):
    """Validates a standard deviation; Python numbers are stored as floats.

    A float is a fixed hyperparameter (not a leaf that `eqx.filter_grad` or an
    optimiser sees); pass a JAX array to differentiate a kernel with respect to it.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{layer}: `{name}` must be non-negative, got {value}.")
        return float(value)
    return jnp.asarray(value)


def scale_and_shift(
    k: Kernel,
    W_std,
    b_std,
    parameterization: str,
    *,
    fan_in: int,
    out_shape1: tuple[int, ...],
    out_shape2: tuple[int, ...],
    linear: Callable[[Array, int], Array] | None = None,
) -> Kernel:
    r"""Kernel of `y = W (L x) + b` for a linear operator `L` on covariances.

    `linear(cov, batch_ndim)` applies `L` (averaged over the receptive field) to
    a covariance; `fan_in` is the number of inputs of each output unit.

    - ntk: $K' = \sigma_w^2 L K + \sigma_b^2$, $\Theta' = K' + \sigma_w^2 L\Theta$;
    - standard: $K'$ as above, $\Theta' = n_{in} L K + 1_b + \sigma_w^2 L\Theta$.
    """
    linear = linear if linear is not None else (lambda x, _: x)
    w2 = W_std**2
    b2 = 0.0 if b_std is None else b_std**2

    def affine(cov, batch_ndim):
        return w2 * linear(cov, batch_ndim) + b2

    nngp_in = linear(k.nngp, 2)
    nngp = w2 * nngp_in + b2
    ntk = None
    if k.ntk is not None:
        ntk_in = w2 * linear(k.ntk, 2)
        if parameterization == "ntk":
            ntk = nngp + ntk_in
        else:
            ntk = fan_in * nngp_in + (0.0 if b_std is None else 1.0) + ntk_in
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov1=affine(k.cov1, 1),
        cov2=None if k.cov2 is None else affine(k.cov2, 1),
        shape1=out_shape1,
        shape2=out_shape2,
        is_gaussian=True,
        is_input=False,
    )
