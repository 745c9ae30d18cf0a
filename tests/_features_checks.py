"""Checks shared by the tests of `et.features`."""

import jax.numpy as jnp


def assert_matches_kernel(features_kernels, k):
    """Exact features reproduce `model.kernel` to 1e-8 (relative to its scale)."""
    for name, got in zip(("nngp", "ntk"), features_kernels):
        expected = getattr(k, name)
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        scale = max(1.0, float(jnp.abs(expected).max()))
        err = float(jnp.abs(got - expected).max())
        assert err < 1e-8 * scale, (name, err, scale)


def relative_error(a, b):
    """Relative Frobenius error of `a` against `b`."""
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
