"""The numerical primitives: accuracy in ulps, safe derivatives, and programs
whose size per layer does not grow with depth."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et
from eqtangents._numerics import fast_arccos, safe_arccos, safe_sqrt


def _grid(dtype):
    tails = np.logspace(-17, 0, 4001)
    x = np.concatenate(
        [np.linspace(-1, 1, 400_001), 1 - tails, tails - 1, [0.5, -0.5, 0, 1, -1]]
    ).astype(dtype)
    x = np.concatenate([x, np.nextafter(x, np.inf), np.nextafter(x, -np.inf)])
    return x[np.abs(x) <= 1]


@pytest.mark.parametrize(
    "dtype, reference_dtype, max_ulp",
    [(np.float32, np.float64, 1.5), (np.float64, np.longdouble, 2.0)],
)
def test_fast_arccos_ulps(dtype, reference_dtype, max_ulp):
    """Against numpy's arccos in a wider type, across [-1, 1] and its ends."""
    x = _grid(dtype)
    ours = np.asarray(jax.jit(fast_arccos)(x)).astype(reference_dtype)
    ref = np.arccos(x.astype(reference_dtype))
    ulp = np.spacing(ref.astype(dtype)).astype(reference_dtype)
    assert ours.dtype == reference_dtype
    assert np.max(np.abs(ours - ref) / ulp) <= max_ulp
    assert jax.jit(fast_arccos)(jnp.asarray(x)).dtype == dtype


def test_fast_arccos_exact_points():
    for dtype in (jnp.float32, jnp.float64):
        out = fast_arccos(jnp.asarray([1.0, -1.0, 0.0], dtype))
        assert out.dtype == dtype
        np.testing.assert_array_equal(
            out, np.asarray([0, np.pi, np.pi / 2]).astype(dtype)
        )
    assert fast_arccos(jnp.asarray([0.5], jnp.bfloat16)).dtype == jnp.bfloat16


def test_safe_derivatives_at_the_edges():
    """Finite derivatives where the plain ones are infinite."""
    x = jnp.asarray([-1.0, 0.0, 0.25, 4.0])
    np.testing.assert_allclose(safe_sqrt(x), [0, 0, 0.5, 2])
    np.testing.assert_allclose(jax.vmap(jax.grad(safe_sqrt))(x), [0, 0, 1, 0.25])
    second = jax.vmap(jax.grad(jax.grad(safe_sqrt)))(x)
    np.testing.assert_allclose(second[2:], [-0.25 / 0.25**1.5, -0.25 / 4**1.5])
    c = jnp.asarray([-1.0, 0.0, 0.6, 1.0])
    slope = jax.vmap(jax.grad(safe_arccos))(c)
    np.testing.assert_allclose(slope, [0, -1, -1 / np.sqrt(1 - 0.36), 0], rtol=1e-6)


def _fused_pair_operations(hlo: str, shape: str) -> int:
    """Instructions in all fused computations that write arrays of `shape`."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(%\S+) .*\{$", line)
        if header:
            name, bodies[header.group(1)] = header.group(1), 0
        elif line.strip() == "}":
            name = None
        elif name:
            bodies[name] += 1
    return sum(
        bodies[m.group(1)]
        for line in hlo.splitlines()
        if f"= {shape}" in line and (m := re.search(r"calls=(%[^,\s]+)", line))
    )


def test_deep_relu_program_does_not_recompute_the_variances():
    """Each layer adds a fixed number of (N1, N2) operations: the per-example
    variances reach them from memory, not recomputed through every earlier
    layer for each pair (which grew the work like depth squared and made a
    10-layer kernel 10x slower)."""

    def operations(depth):
        layers = [et.Dense(8, W_std=1.5, b_std=0.05), et.Relu()] * depth
        model = et.Serial(*layers, et.Dense(1))
        x = jnp.ones((16, 5), jnp.float32)
        fn = jax.jit(lambda a: model.kernel(a, None, get=("nngp", "ntk")))
        return _fused_pair_operations(fn.lower(x).compile().as_text(), "f32[16,16]")

    counts = [operations(depth) for depth in (3, 6, 9)]
    first, second = counts[1] - counts[0], counts[2] - counts[1]
    assert second <= first + 10, counts
