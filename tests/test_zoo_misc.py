"""LayerNorm, Dropout, ImageResize, Index and DotGeneral.

The NT 0.6.5 reference cases (layernorm_*, dropout, image_resize,
act_hermite_17) run in `test_reference_kernels.py`. Here each layer's kernel is
checked against Monte Carlo estimates from finite networks built from the same
layers (Index and DotGeneral have no NT reference), the diagonal spatial layout
against the full one, the forward passes against `jax` primitives, and the
structural errors.

Every Monte Carlo network has one hidden nonlinearity, so its empirical NNGP
and NTK, averaged over initialisations (and dropout masks), are unbiased
estimates of the infinite-width kernels at any width; only LayerNorm, which
divides by an empirical variance, adds a finite-width bias of order 1/width.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et
from eqtangents._kernel import kernel_from_inputs, spatial_diagonal

_jit_kernel = eqx.filter_jit(
    lambda model, x1, x2=None, get=None, diagonal_spatial=False: model.kernel(
        x1, x2, get, diagonal_spatial=diagonal_spatial
    )
)

# Networks ending in several branches (Parallel) propagate from the input kernel.
_jit_propagate = eqx.filter_jit(
    lambda model, x1, x2=None, diagonal_spatial=False: model.propagate(
        kernel_from_inputs(x1, x2, diagonal_spatial=diagonal_spatial, compute_ntk=True)
    )
)


def _inputs(shape, n1=2, n2=3, seed=1, shift=0.0):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.standard_normal((n1,) + shape) + shift),
        jnp.asarray(rng.standard_normal((n2,) + shape) + shift),
    )


def _near_pairs(shape, seed):
    """Three inputs, and two more that lie close to the first two."""
    x, _ = _inputs(shape, n1=3, seed=seed, shift=0.5)
    return x, x[:2] + 0.1 * x[1:]


# ------------------------------------------------------------ Monte Carlo


def _forward(static, params, x, key):
    """The network on a batch, with one dropout key per example."""
    net = eqx.combine(params, static)
    return jax.vmap(lambda xi, ki: net(xi, key=ki))(x, jax.random.split(key, len(x)))


def _ntk(j1, j2, width):
    """Sum over parameters of Jacobian products, per output unit."""
    return sum(
        jnp.einsum("aop,bop->ab", a.reshape(a.shape[:2] + (-1,)),
                   b.reshape(b.shape[:2] + (-1,)))
        for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2))
    ) / width  # fmt: skip


def _mean_and_se(one, key, n_samples):
    samples = jax.jit(lambda keys: jax.lax.map(one, keys))(
        jax.random.split(key, n_samples)
    )
    mean = jax.tree.map(lambda s: s.mean(0), samples)
    se = jax.tree.map(lambda s: s.std(0) / np.sqrt(n_samples), samples)
    return mean, se


def monte_carlo(cases, key, n_samples):
    """Mean and standard error over initialisations and dropout masks of the
    empirical NNGP and NTK (a plain `jax.jacobian` contraction) of networks with
    flat outputs. Each case `(model, x1, x2)` gives `"self"`, the kernel of `x1`
    with itself from one forward pass (one dropout mask per example), and
    `"cross"`, between `x1` and `x2` passed separately (their own masks)."""

    def one(key):
        out = []
        for (model, x1, x2), k in zip(cases, jax.random.split(key, len(cases))):
            k_init, k1, k2 = jax.random.split(k, 3)
            net = model.init(k_init, tuple(x1.shape[1:]))
            params, static = eqx.partition(net, eqx.is_inexact_array)
            y1, y2 = _forward(static, params, x1, k1), _forward(static, params, x2, k2)
            jac = jax.jacobian(_forward, argnums=1)
            j1, j2 = jac(static, params, x1, k1), jac(static, params, x2, k2)
            width = y1.shape[-1]
            out.append({
                "self": {"nngp": y1 @ y1.T / width, "ntk": _ntk(j1, j1, width)},
                "cross": {"nngp": y1 @ y2.T / width, "ntk": _ntk(j1, j2, width)},
            })  # fmt: skip
        return out

    return _mean_and_se(one, key, n_samples)


def _empirical_nngp(f):
    """Mean over channels of f[n, c, *s] f[m, c, *s'], in the kernel layout."""
    d = f.ndim - 2
    p = f.reshape(f.shape[:2] + (-1,))
    est = jnp.einsum("ncp,mcq->nmpq", p, p) / f.shape[1]
    est = est.reshape(est.shape[:2] + f.shape[2:] * 2)
    return jnp.transpose(
        est, [0, 1] + [a for i in range(d) for a in (2 + i, 2 + d + i)]
    )


def monte_carlo_spatial(model, x, key, n_samples):
    """Mean and standard error of the empirical NNGP of `x` with itself (one
    forward pass) of each spatial output of `model`, full kernel layout."""

    def one(k):
        k_init, k_drop = jax.random.split(k)
        net = model.init(k_init, tuple(x.shape[1:]))
        params, static = eqx.partition(net, eqx.is_inexact_array)
        return jax.tree.map(_empirical_nngp, _forward(static, params, x, k_drop))

    return _mean_and_se(one, key, n_samples)


def _check(name, exact, mean, se):
    """Agreement within sampling error: max z-score, and the RMS error relative
    to the kernel's RMS against the relative RMS standard error."""
    assert mean.shape == exact.shape, (name, mean.shape, exact.shape)
    z = float(jnp.max(jnp.abs(mean - exact) / jnp.maximum(se, 1e-9 * jnp.max(se))))
    scale = jnp.sqrt(jnp.mean(exact**2))
    rel = float(jnp.sqrt(jnp.mean((mean - exact) ** 2)) / scale)
    rel_se = float(jnp.sqrt(jnp.mean(se**2)) / scale)
    report = (name, round(z, 2), round(rel, 4), round(rel_se, 4))
    assert z < 6.0, report
    assert rel < 3 * rel_se, report
    assert rel_se < 0.05, report
    return report


FLAT = {
    # LayerNorm over the channels of a Dense layer (a finite-width bias of order
    # 1/512), then Dropout: "self" shares a mask on the diagonal, "cross" does
    # not, though `x2` lies close to `x1` (which keeps the sampling error small).
    "layernorm_dropout": (
        et.Serial(et.Dense(512, W_std=1.5, b_std=0.3), et.LayerNorm(), et.Erf(),
                  et.Dropout(0.6), et.Dense(32)),
        _near_pairs((5,), seed=3),
    ),
    # The NTK through resize (up along H, down along W), a contraction with
    # a constant and a strided slice.
    "resize_dot_index": (
        et.Serial(
            et.Conv(32, (2, 2), padding="SAME", W_std=1.4, b_std=0.3), et.Relu(),
            et.ImageResize((-1, 4, 3), "linear"),
            et.DotGeneral(rhs=np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, 0.2]]),
                          dimension_numbers=(((2,), (0,)), ((), ()))),
            et.Index((slice(None), slice(None, None, 2))),
            et.Flatten(), et.Dense(32),
        ),
        _inputs((2, 3, 4), n1=2, n2=2, seed=5, shift=0.5),
    ),
}  # fmt: skip


def test_monte_carlo_flat_outputs():
    """NNGP and NTK of LayerNorm, Dropout and the spatial linear layers, for
    `x2=None` and for a separate `x2`."""
    cases = [(model, *xs) for model, xs in FLAT.values()]
    mean, se = monte_carlo(cases, jax.random.key(0, impl="rbg"), n_samples=192)
    for name, (model, x1, x2), m, s in zip(FLAT, cases, mean, se):
        for side, exact in (
            ("self", _jit_kernel(model, x1)),
            ("cross", _jit_kernel(model, x1, x2)),
        ):
            for kind in ("nngp", "ntk"):
                _check(f"{name} {side} {kind}", getattr(exact, kind),
                       m[side][kind], s[side][kind])  # fmt: skip


SPATIAL = {
    "index_flip_and_drop": et.Index((slice(None), slice(None, None, -1), 1)),
    "dot_lhs_contract_batch": et.DotGeneral(
        lhs=np.cos(np.arange(24.0)).reshape(3, 2, 4),
        dimension_numbers=(((2,), (2,)), ((0,), (1,))),
    ),
    "dot_rhs_batch_outer": et.DotGeneral(
        rhs=np.array([[1.0, -0.5], [0.5, 2.0], [-1.5, 0.7]]),
        dimension_numbers=(((), ()), ((1,), (0,))),
    ),
    "resize_linear_down": et.ImageResize((-1, 2, 3), "linear"),
    "resize_nearest": et.ImageResize((-1, 2, 6), "nearest"),
    "dropout": et.Dropout(0.75),
}


def test_monte_carlo_spatial_nngp():
    """Full spatial covariances: each layer after a random Conv and a Relu, and
    LayerNorm over channels and positions right after the Conv (a finite-width
    bias of order 1 / (96 * 12)), all in one network."""
    x, _ = _inputs((2, 3, 4), n1=3, seed=4, shift=0.5)
    branches = {
        "layernorm_all_axes": et.LayerNorm(axis=(0, 1, 2)),
        **{name: et.Serial(et.Relu(), layer) for name, layer in SPATIAL.items()},
    }
    model = et.Serial(
        et.Conv(96, (2, 2), padding="SAME", W_std=1.4, b_std=0.3),
        et.FanOut(len(branches)), et.Parallel(*branches.values()),
    )  # fmt: skip
    exact = _jit_propagate(model, x)
    mean, se = monte_carlo_spatial(model, x, jax.random.key(1, impl="rbg"), 192)
    for name, e, m, s in zip(branches, exact, mean, se):
        _check(name, e.nngp, m, s)


# ----------------------------------------------------- layouts and identities


DOT_CONTRACT = et.DotGeneral(
    rhs=np.linspace(-1.0, 1.5, 12).reshape(4, 3),
    dimension_numbers=(((2,), (0,)), ((), ())),
)


DIAGONAL_OK = {
    "layernorm_channels": et.LayerNorm(),
    "layernorm_channels_and_w_eps": et.LayerNorm(axis=(0, -1), eps=0.1),
    "dropout": et.Dropout(0.3),
    "index": et.Index((Ellipsis, slice(1, 4, 2))),
    **{name: SPATIAL[name] for name in ("dot_rhs_batch_outer", "resize_nearest")},
}  # fmt: skip


def test_diagonal_layout_matches_full():
    """Layers that need only the spatial diagonal give the diagonal of the full
    computation. (Dropout with `x2=None` is checked in both layouts by
    `test_dropout_scales_exactly_the_shared_entries`.)"""
    x1, x2 = _inputs((2, 3, 4), n1=2, n2=3, seed=6)
    model = et.Serial(
        et.Conv(8, 1, W_std=1.2, b_std=0.2),
        et.FanOut(len(DIAGONAL_OK)), et.Parallel(*DIAGONAL_OK.values()),
    )  # fmt: skip
    for name, layer in DIAGONAL_OK.items():
        assert layer.needs_full_spatial(False) is False, name
    full = _jit_propagate(model, x1, x2)
    diag = _jit_propagate(model, x1, x2, diagonal_spatial=True)
    for branch, f, d in zip(DIAGONAL_OK, full, diag):
        assert d.diagonal_spatial and not f.diagonal_spatial
        for name, batch_ndim in (("nngp", 2), ("ntk", 2), ("cov1", 1), ("cov2", 1)):
            a, b = getattr(d, name), getattr(f, name)
            if a is None:
                assert b is None
                continue
            np.testing.assert_allclose(
                a, spatial_diagonal(b, batch_ndim), rtol=1e-12, atol=1e-14,
                err_msg=f"{branch} {name}",
            )  # fmt: skip


def test_dropout_scales_exactly_the_shared_entries():
    """The rule itself: `x2=None` scales the batch-and-spatial diagonal, `x2`
    given leaves nngp/ntk alone; test mode and inference are the identity."""
    x1, _ = _inputs((2, 3, 2), n1=3, seed=7)
    base = et.Serial(et.Conv(8, (2, 2), padding="SAME", b_std=0.1), et.Relu())
    k0 = _jit_kernel(base, x1)
    k = et.Dropout(0.25).propagate(k0)
    eye_n = np.eye(3)[:, :, None, None, None, None]
    eye_s = np.einsum("ab,cd->abcd", np.eye(3), np.eye(2))[None, None]
    factor = 1 + 3 * eye_n * eye_s
    np.testing.assert_allclose(k.nngp, k0.nngp * factor, rtol=1e-14)
    np.testing.assert_allclose(k.ntk, k0.ntk * factor, rtol=1e-14)
    np.testing.assert_allclose(k.cov1, k0.cov1 * (1 + 3 * eye_s[0]), rtol=1e-14)
    assert not k.is_gaussian
    # With only the spatial diagonal stored, every stored entry is shared.
    kd0 = _jit_kernel(base, x1, diagonal_spatial=True)
    kd = et.Dropout(0.25).propagate(kd0)
    np.testing.assert_allclose(
        kd.nngp, kd0.nngp * (1 + 3 * eye_n[..., 0, 0]), rtol=1e-14
    )
    np.testing.assert_allclose(kd.cov1, 4 * kd0.cov1, rtol=1e-14)
    np.testing.assert_allclose(kd.nngp, spatial_diagonal(k.nngp, 2), rtol=1e-14)
    k2 = _jit_kernel(base, x1, x1 + 0.0)
    np.testing.assert_array_equal(et.Dropout(0.25).propagate(k2).nngp, k2.nngp)
    for off in (et.Dropout(0.25, mode="test"), et.Dropout(0.25, inference=True)):
        assert off.propagate(k0) is k0


def test_layernorm_kernel_is_a_correlation_for_flat_inputs():
    """Over channels of a Dense layer the kernel is K / sqrt(v1 v2) (eps = 0)."""
    x1, x2 = _inputs((5,), n1=3, n2=4, seed=8)
    dense = et.Dense(16, W_std=1.3, b_std=0.4)
    k = _jit_kernel(dense, x1, x2)
    kn = _jit_kernel(et.Serial(dense, et.LayerNorm(eps=0.0)), x1, x2)
    v1, v2 = k.cov1, k.cov2
    np.testing.assert_allclose(kn.nngp, k.nngp / np.sqrt(np.outer(v1, v2)), rtol=1e-13)
    np.testing.assert_allclose(kn.ntk, k.ntk / np.sqrt(np.outer(v1, v2)), rtol=1e-13)
    np.testing.assert_allclose(kn.cov1, np.ones(3), rtol=1e-13)
    assert kn.is_gaussian


def test_identity_cases():
    """DotGeneral without a constant and Index with `...` change nothing; a
    DotGeneral with a scalar scales the kernel by its square."""
    x1, x2 = _inputs((2, 3, 4), seed=9)
    layers = (
        et.Identity(),
        et.DotGeneral(),
        et.Index(Ellipsis),
        et.DotGeneral(rhs=2.0),
    )
    model = et.Serial(
        et.Conv(8, (2, 2), b_std=0.1), et.Relu(),
        et.FanOut(len(layers)), et.Parallel(*layers),
    )  # fmt: skip
    k, *same, doubled = _jit_propagate(model, x1, x2)
    for out in same:
        np.testing.assert_array_equal(out.nngp, k.nngp)
        np.testing.assert_array_equal(out.ntk, k.ntk)
    np.testing.assert_allclose(doubled.nngp, 4 * k.nngp, rtol=1e-14)
    np.testing.assert_allclose(doubled.ntk, 4 * k.ntk, rtol=1e-14)


def test_kernels_jit_and_grad():
    x1, x2 = _inputs((2, 3, 5), seed=10)

    def loss(x1):
        model = et.Serial(
            et.Conv(8, (2, 2), b_std=0.1), et.LayerNorm(axis=(0, 1)), et.Relu(),
            DOT_CONTRACT, et.ImageResize((-1, 3, 3), "linear"),
            et.Dropout(0.5), et.Index((slice(None), 1)), et.GlobalAvgPool(),
            et.Dense(1),
        )  # fmt: skip
        return jnp.sum(model.kernel(x1, x2, get="ntk"))

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    value, grad = value_and_grad(x1)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # A central difference along a random direction agrees with the gradient.
    direction = jnp.asarray(np.random.default_rng(0).standard_normal(x1.shape))
    h = 1e-5
    up, down = (value_and_grad(x1 + s * h * direction)[0] for s in (1, -1))
    slope = (up - down) / (2 * h)
    np.testing.assert_allclose(slope, jnp.vdot(grad, direction), rtol=1e-6)


# ----------------------------------------------------------- forward passes


def test_forward_passes_match_jax():
    x = jnp.asarray(np.random.default_rng(11).standard_normal((3, 4, 5)))
    y = et.LayerNorm(axis=(0, 2), eps=1e-6)(x)
    mean = x.mean(axis=(0, 2), keepdims=True)
    ref = (x - mean) / np.sqrt(
        ((x - mean) ** 2).mean(axis=(0, 2), keepdims=True) + 1e-6
    )
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    np.testing.assert_array_equal(
        et.Index((slice(None), 2, slice(1, 4)))(x), x[:, 2, 1:4]
    )
    layer = et.ImageResize((-1, 3, 7), "cubic")
    np.testing.assert_array_equal(layer(x), jax.image.resize(x, (3, 3, 7), "cubic"))
    assert layer.output_shape(x.shape) == (3, 3, 7)
    lhs = jnp.arange(10.0).reshape(2, 5)
    dot = et.DotGeneral(lhs=lhs, dimension_numbers=(((1,), (2,)), ((), ())))
    ref = jnp.moveaxis(jax.lax.dot_general(lhs, x, (((1,), (2,)), ((), ()))), 1, 0)
    assert dot(x).shape == (3, 2, 4) == dot.output_shape(x.shape)
    np.testing.assert_allclose(dot(x), ref, rtol=1e-12)
    negative = et.DotGeneral(lhs=lhs, dimension_numbers=(((-1,), (-1,)), ((), ())))
    np.testing.assert_array_equal(negative(x), dot(x))
    # The constant is not a parameter: no gradient flows into it.
    grad = jax.grad(lambda d: jnp.sum(d(x) ** 2))(dot)
    np.testing.assert_array_equal(grad.lhs, 0.0)


def test_dropout_forward():
    x = jnp.ones((200, 10))
    layer = et.Dropout(0.7)
    y = layer(x, key=jax.random.key(0))
    assert set(np.unique(np.asarray(y)).round(12)) == {0.0, round(1 / 0.7, 12)}
    assert abs(float(jnp.mean(y != 0)) - 0.7) < 0.03
    assert not np.array_equal(y, layer(x, key=jax.random.key(1)))
    np.testing.assert_array_equal(et.Dropout(0.7, mode="test")(x), x)
    np.testing.assert_array_equal(layer(x, inference=True), x)
    model = eqx.nn.inference_mode(et.Serial(et.Dropout(0.7)))
    np.testing.assert_array_equal(model(x), x)
    with pytest.raises(ValueError, match="needs a random key"):
        layer(x)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: et.Dropout(0.0), r"in \(0, 1\]"),
        (lambda: et.Dropout(1.5), r"in \(0, 1\]"),
        (lambda: et.Dropout(-0.2), r"in \(0, 1\]"),
        (lambda: et.Dropout(0.5, mode="eval"), "'train' or 'test'"),
        (lambda: et.LayerNorm(axis=()), "non-empty tuple"),
        (lambda: et.Index((slice(0.5, 2), 0)), "integer bounds"),
        (lambda: et.Index((Ellipsis, Ellipsis)), "more than one"),
        (lambda: et.ImageResize((-1, 0, 3), "linear"), "positive sizes or -1"),
        (lambda: et.ImageResize((-1, 3, 3), "spline"), "Unknown resize method"),
        (lambda: et.DotGeneral(lhs=1.0, rhs=1.0), "at most one"),
    ],
)
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_index_refuses_new_axes_and_index_arrays():
    for idx in ((None, 0), (slice(None), np.array([0, 2]))):
        with pytest.raises((TypeError, ValueError)):
            et.Index(idx)


def _conv(*layers):
    return et.Serial(et.Conv(4, (2, 2), padding="SAME"), *layers, et.Flatten())


def _contract(size, axis, other_axis=0):
    numbers = (((axis,), (other_axis,)), ((), ()))
    return et.DotGeneral(rhs=np.ones(size), dimension_numbers=numbers)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_conv(et.LayerNorm(axis=1)), "channel axis 0"),
        (_conv(et.LayerNorm(axis=(0, 3))), "out of range"),
        (_conv(et.LayerNorm(axis=(0, 1, -2))), "repeats an axis"),
        (_conv(et.Relu(), et.LayerNorm()), "needs Gaussian inputs"),
        (et.Serial(et.Dropout(0.5), et.Flatten()), "network's inputs"),
        (_conv(et.Index((slice(0, 2),))), "selects channels"),
        (_conv(et.Index(0)), "removes it"),
        (_conv(et.Index((slice(None), 7))), "out of range"),
        (_conv(et.Index((slice(None), 0, 0, 0))), "indexes 4 axes"),
        (_conv(et.ImageResize((-1, 2), "linear")), "one entry per axis"),
        (_conv(et.ImageResize((2, 2, 2), "linear")), "channel entry"),
        (_conv(et.ImageResize((-1, 2, 2), "cubic")), "'linear' and 'nearest'"),
        (_conv(_contract(size=4, axis=0)), "channel axis"),
        (_conv(_contract(size=2, axis=1)), "does not fit"),
        (_conv(_contract(size=3, axis=5)), "out of range"),
        (_conv(_contract(size=3, axis=1, other_axis=1)), "out of range"),
    ],
)
def test_structural_errors(model, match):
    x = jnp.ones((2, 4, 3, 3))
    with pytest.raises(ValueError, match=match):
        _jit_kernel(model, x)


def test_mixing_layers_refuse_a_diagonal_kernel():
    x = jnp.ones((2, 4, 3, 5))
    k = _jit_kernel(et.Conv(4, (2, 2)), x, diagonal_spatial=True)
    for layer in (et.ImageResize((-1, 3, 3), "linear"), DOT_CONTRACT):
        assert layer.needs_full_spatial(False) is True
        with pytest.raises(ValueError, match="needs full spatial covariances"):
            layer.kernel(k)
