"""`et.features` spatial layers (Conv, AvgPool, GlobalAvgPool, Flatten) against
the kernels of the matching eqtangents networks."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

from ._features_checks import assert_matches_kernel, relative_error

F = et.features


def _x(shape, seed=0):
    # NumPy draws: no compilation per shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _unit_images(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    norms = np.linalg.norm(x.reshape(shape[0], -1), axis=1)
    return jnp.asarray(x / norms.reshape((-1,) + (1,) * (len(shape) - 1)))


@eqx.filter_jit
def _init(fmodel, key, shape):
    return fmodel.init(key, shape)


@eqx.filter_jit
def _embed(fmodel, x):
    return fmodel(F.Features.from_inputs(x))


@eqx.filter_jit
def _kernels(fmodel, x):
    return tuple(F.kernel(fmodel(F.Features.from_inputs(x))))


def _exact_kernels(fmodel, x):
    fmodel = _init(fmodel, jax.random.key(0), x.shape[1:])
    return F.kernel(_embed(fmodel, x))


# ---------------------------------------------------------------- Conv


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("par", ["ntk", "standard"])
@pytest.mark.parametrize("b_std", [None, 0.3])
def test_conv_relu_conv_exact_2d(padding, par, b_std):
    # Strided and dilated convolutions, kernels at the spatial outputs.
    x = _x((3, 2, 7, 6))
    net = et.Serial(
        et.Conv(5, (3, 2), (2, 1), padding, 1, 1.3, b_std, par),
        et.Relu(),
        et.Conv(4, 2, 1, padding, (1, 2), 0.9, 0.1, par),
    )
    fmodel = F.Serial(
        F.Conv((3, 2), (2, 1), padding, 1, 1.3, b_std, par, out_channels=5),
        F.Relu("exact"),
        F.Conv(2, 1, padding, (1, 2), 0.9, 0.1, par, out_channels=4),
    )
    assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("par", ["ntk", "standard"])
def test_linear_conv_features_are_exact_across_batches(padding, par):
    # Without activations the features need no batch: embed two batches
    # separately and compare the cross kernel; widths are as output_shape says.
    x1, x2 = _x((3, 3, 9), 1), _x((2, 3, 9), 2)
    net = et.Serial(
        et.Conv(6, 3, 2, padding, W_std=1.2, b_std=0.2, parameterization=par),
        et.Conv(4, 2, 1, padding, W_std=0.8, b_std=0.4, parameterization=par),
    )
    fmodel = F.Serial(
        F.Conv(3, 2, padding, W_std=1.2, b_std=0.2, parameterization=par,
               out_channels=6),
        F.Conv(2, 1, padding, W_std=0.8, b_std=0.4, parameterization=par),
    )  # fmt: skip
    fmodel = _init(fmodel, jax.random.key(0), (3, 9))
    f1, f2 = _embed(fmodel, x1), _embed(fmodel, x2)
    assert_matches_kernel(F.kernel(f1, f2), net.kernel(x1, x2))
    shape = fmodel.output_shape((3, 9))
    assert f1.shape == shape._replace(width=None)
    spatial = (4, 3) if padding == "VALID" else (5, 5)
    assert shape.spatial == spatial[1:] and shape.width is None
    assert shape.nngp == 2 * (3 * 3 + 1) + 1
    assert shape.ntk == shape.nngp + 2 * (3 * 3 + 1)


def test_conv_1d_with_relu_exact():
    x = _x((4, 3, 10))
    net = et.Serial(
        et.Conv(8, 3, 2, "SAME", W_std=1.5, b_std=0.1), et.Relu(),
        et.Conv(8, 3, 1, "CIRCULAR", W_std=1.1), et.Relu(),
        et.Conv(1, 2, W_std=0.7, b_std=0.2),
    )  # fmt: skip
    fmodel = F.Serial(
        F.Conv(3, 2, "SAME", W_std=1.5, b_std=0.1), F.Relu("exact"),
        F.Conv(3, 1, "CIRCULAR", W_std=1.1), F.Relu("exact"),
        F.Conv(2, W_std=0.7, b_std=0.2),
    )  # fmt: skip
    assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))


# ---------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    "pool",
    [
        dict(kernel_size=2),
        dict(kernel_size=(3, 2), stride=(2, 1)),
        dict(kernel_size=3, stride=2, padding="SAME"),
        dict(kernel_size=3, stride=2, padding="SAME", normalize_edges=True),
        dict(kernel_size=(2, 3), padding="CIRCULAR"),
    ],
)
def test_avg_pool_exact(pool):
    x = _x((3, 2, 6, 5))
    net = et.Serial(et.Conv(4, 3, padding="SAME", b_std=0.2), et.Relu(),
                    et.AvgPool(**pool))  # fmt: skip
    fmodel = F.Serial(F.Conv(3, padding="SAME", b_std=0.2), F.Relu("exact"),
                      F.AvgPool(**pool))  # fmt: skip
    assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))
    out = et.Serial(et.Conv(4, 3, padding="SAME"), et.AvgPool(**pool))
    shape = F.Serial(F.Conv(3, padding="SAME"), F.AvgPool(**pool)).output_shape(
        x.shape[1:]
    )
    assert shape.spatial == out.output_shape(x.shape[1:])[1:]


def test_global_avg_pool_and_flatten_exact():
    x = _x((3, 2, 5, 4))
    for pool, fpool in ((et.GlobalAvgPool(), F.GlobalAvgPool()),
                        (et.Flatten(), F.Flatten())):  # fmt: skip
        net = et.Serial(et.Conv(4, 3, b_std=0.2), et.Relu(), pool,
                        et.Dense(1, 1.3, 0.1))  # fmt: skip
        fmodel = F.Serial(F.Conv(3, b_std=0.2), F.Relu("exact"), fpool,
                          F.Dense(1.3, 0.1))  # fmt: skip
        assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))


def test_flatten_is_the_mean_of_the_spatial_diagonal():
    # Independent check of the rule features.Flatten mirrors.
    x = _x((3, 2, 4, 3))
    conv = et.Conv(4, 2, b_std=0.1)
    k = conv.kernel(x, None)
    flat = et.Serial(conv, et.Flatten()).kernel(x, None)
    for name in ("nngp", "ntk"):
        cov = getattr(k, name)  # (N, N, H, H', W, W')
        diag = jnp.einsum("abhhww->abhw", cov).mean(axis=(2, 3))
        np.testing.assert_allclose(getattr(flat, name), diag, rtol=1e-12)
    f = _embed(_init(F.Serial(F.Conv(2, b_std=0.1), F.Flatten()),
                     jax.random.key(0), (2, 4, 3)), x)  # fmt: skip
    np.testing.assert_allclose(F.kernel(f, get="ntk"), flat.ntk, rtol=1e-12)


def test_pooling_flat_features_does_nothing_like_the_network():
    x = _x((4, 5))
    net = et.Serial(et.Dense(8, 1.2, 0.1), et.Flatten(), et.GlobalAvgPool(),
                    et.Dense(1))  # fmt: skip
    fmodel = F.Serial(F.Dense(1.2, 0.1), F.Flatten(), F.GlobalAvgPool(), F.Dense())
    assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))


def test_standard_parameterization_after_flatten_uses_positions_times_channels():
    x = _x((3, 2, 4, 4))
    net = et.Serial(et.Conv(6, 3, parameterization="standard"), et.Flatten(),
                    et.Dense(1, 1.1, 0.2, "standard"))  # fmt: skip
    fmodel = F.Serial(F.Conv(3, parameterization="standard", out_channels=6),
                      F.Flatten(), F.Dense(1.1, 0.2, "standard"))  # fmt: skip
    assert F.Flatten().output_shape(F.FeatureShape(5, 7, 6, (2, 2))) == (
        F.FeatureShape(20, 28, 24, ())
    )
    assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))


# ---------------------------------------------------------------- networks


def test_conv_relu_avgpool_flatten_dense_exact():
    x = _x((4, 3, 6, 6))
    net = et.Serial(
        et.Conv(16, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), et.Relu(),
        et.AvgPool(2), et.Flatten(), et.Dense(1, 1.2, 0.05),
    )  # fmt: skip
    fmodel = F.Serial(
        F.Conv((3, 3), padding="SAME", W_std=1.5, b_std=0.1), F.Relu("exact"),
        F.AvgPool(2), F.Flatten(), F.Dense(1.2, 0.05),
    )  # fmt: skip
    assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))


@pytest.mark.parametrize("par", ["ntk", "standard"])
def test_conv_relu_conv_relu_global_pool_dense_exact(par):
    x = _x((3, 2, 6, 5))
    net = et.Serial(
        et.Conv(8, 3, padding="SAME", W_std=1.4, b_std=0.1, parameterization=par),
        et.Relu(),
        et.Conv(8, 3, 2, W_std=1.2, b_std=0.2, parameterization=par),
        et.Relu(),
        et.GlobalAvgPool(),
        et.Dense(1, 0.9, 0.1, par),
    )
    fmodel = F.Serial(
        F.Conv(3, padding="SAME", W_std=1.4, b_std=0.1, parameterization=par,
               out_channels=8),
        F.Relu("exact"),
        F.Conv(3, 2, W_std=1.2, b_std=0.2, parameterization=par, out_channels=8),
        F.Relu("exact"),
        F.GlobalAvgPool(),
        F.Dense(0.9, 0.1, par),
    )  # fmt: skip
    assert_matches_kernel(_exact_kernels(fmodel, x), net.kernel(x, None))


# ---------------------------------------------------------------- random features

_XR = _x((10, 3, 6, 6), 3)
_NET = et.Serial(
    et.Conv(16, 3, padding="SAME", W_std=1.5, b_std=0.1), et.Relu(),
    et.Conv(16, 3, padding="SAME", W_std=1.2, b_std=0.1), et.AvgPool(2),
    et.Flatten(), et.Dense(1, 1.1, 0.1),
)  # fmt: skip


def _random_model(m, conv_sketch=None, flatten_sketch=None):
    return F.Serial(
        F.Conv(3, padding="SAME", W_std=1.5, b_std=0.1),
        F.Relu("random_features", nngp_dim=m, step_dim=m, sketch_dim=m),
        F.Conv(3, padding="SAME", W_std=1.2, b_std=0.1, sketch_dim=conv_sketch),
        F.AvgPool(2),
        F.Flatten(sketch_dim=flatten_sketch),
        F.Dense(1.1, 0.1),
    )


@functools.cache
def _exact_random_net():
    return _NET.kernel(_XR, None)


def _errors(fmodel, seeds):
    """Mean single-seed and seed-averaged relative errors (NNGP, NTK)."""
    k = _exact_random_net()
    runs = [_kernels(_init(fmodel, jax.random.key(s), _XR.shape[1:]), _XR)
            for s in range(seeds)]  # fmt: skip
    single, averaged = [], []
    for i, name in enumerate(("nngp", "ntk")):
        exact = getattr(k, name)
        single.append(np.mean([relative_error(r[i], exact) for r in runs]))
        averaged.append(
            relative_error(jnp.mean(jnp.stack([r[i] for r in runs]), 0), exact)
        )
    return np.array(single), np.array(averaged)


def test_random_feature_error_falls_with_dimension():
    small, _ = _errors(_random_model(128), 8)
    large, _ = _errors(_random_model(2048), 4)
    assert np.all(large < small / 2.5), (small, large)
    assert np.all(large < 0.03), large


def test_random_features_with_sketches_average_to_kernel():
    # One activation, then linear layers: the sketched Conv and Flatten keep
    # the estimate unbiased, so the mean over seeds converges to the kernel.
    # 16 seeds: the error of the mean is about a quarter of a single seed's.
    single, averaged = _errors(_random_model(256, 64, 256), 16)
    assert np.all(averaged < 0.4 * single), (single, averaged)
    assert np.all(averaged < 0.05), averaged


def test_sketched_shapes_match_output_shape():
    fmodel = _init(_random_model(64, 48, 80), jax.random.key(0), _XR.shape[1:])
    f = _embed(fmodel, _XR)
    assert f.shape == fmodel.output_shape(_XR.shape[1:])._replace(width=None)
    assert fmodel.layers[2].output_shape(F.FeatureShape(64, 64, None, (6, 6))) == (
        F.FeatureShape(48, 48, None, (6, 6))
    )
    assert fmodel.layers[4].output_shape(F.FeatureShape(3, 5, None, (5, 5))) == (
        F.FeatureShape(80, 80, None, ())
    )
    # A sketch as wide as the padded input is an isometry: exact kernels.
    exact = F.Serial(F.Conv(3, padding="SAME", b_std=0.1, sketch_dim=32),
                     F.Flatten(sketch_dim=2048))  # fmt: skip
    exact = _init(exact, jax.random.key(1), _XR.shape[1:])
    k = et.Serial(et.Conv(4, 3, padding="SAME", b_std=0.1), et.Flatten()).kernel(
        _XR, None
    )
    assert_matches_kernel(F.kernel(_embed(exact, _XR)), k)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_and_dtypes(dtype):
    fmodel = _init(_random_model(64, 48, 80), jax.random.key(0), _XR.shape[1:])
    out = _embed(fmodel, _XR.astype(dtype))
    reference = _embed(fmodel, _XR)
    assert out.nngp_feat.dtype == dtype and out.ntk_feat.dtype == dtype
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(out.ntk_feat, reference.ntk_feat, rtol=tol, atol=tol)
    x = _x((3, 2, 5, 4)).astype(dtype)
    net = et.Serial(et.Conv(4, 3, padding="SAME", W_std=jnp.asarray(1.3)),
                    et.Relu(), et.AvgPool(2), et.GlobalAvgPool())  # fmt: skip
    exact = F.Serial(F.Conv(3, padding="SAME", W_std=jnp.asarray(1.3)),
                     F.Relu("exact"), F.AvgPool(2), F.GlobalAvgPool())  # fmt: skip
    nngp, ntk = _kernels(_init(exact, jax.random.key(0), x.shape[1:]), x)
    assert nngp.dtype == dtype and ntk.dtype == dtype
    k = net.kernel(x.astype(jnp.float64), None)
    np.testing.assert_allclose(ntk, k.ntk, rtol=0, atol=100 * tol)


# ---------------------------------------------------------------- errors


def test_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"features\.Conv.*flat"):
        F.Serial(F.Dense(), F.Conv(3)).init(key, (5,))
    with pytest.raises(ValueError, match=r"features\.Conv.*smaller `kernel_size`"):
        F.Conv(5).init(key, (2, 4, 6))
    with pytest.raises(ValueError, match=r"features\.AvgPool.*smaller"):
        F.AvgPool(7).output_shape((2, 4, 6))
    with pytest.raises(ValueError, match=r"features\.AvgPool.*flat"):
        F.AvgPool(2).output_shape(F.FeatureShape(3, 0, 3, ()))
    with pytest.raises(ValueError, match=r"features\.Conv.*2 spatial"):
        F.Conv((3, 3)).output_shape((2, 8))
    with pytest.raises(ValueError, match=r"features\.Conv.*out_channels"):
        F.Serial(
            F.Conv(3), F.Relu("exact"), F.Conv(3, parameterization="standard")
        ).init(key, (2, 6, 6))
    with pytest.raises(ValueError, match=r"features\.Conv.*init"):
        F.Conv(3, parameterization="standard")(F.Features.from_inputs(_x((2, 2, 5))))
    with pytest.raises(ValueError, match=r"features\.Conv.*sketch_dim=None"):
        F.Serial(F.Conv(3), F.Relu("exact"), F.Conv(3, sketch_dim=8)).init(
            key, (2, 6, 6)
        )
    with pytest.raises(ValueError, match=r"features\.Flatten.*sketch_dim=None"):
        F.Serial(F.Conv(3), F.Relu("exact"), F.Flatten(sketch_dim=8)).init(
            key, (2, 6, 6)
        )
    with pytest.raises(ValueError, match=r"features\.Conv has no random"):
        F.Conv(3, sketch_dim=8)(F.Features.from_inputs(_x((2, 2, 5))))
    with pytest.raises(ValueError, match=r"features\.Flatten has no random"):
        F.Flatten(sketch_dim=8)(F.Features.from_inputs(_x((2, 2, 5))))
    flatten = F.Flatten(sketch_dim=8).init(key, (2, 5))
    with pytest.raises(ValueError, match=r"features\.Flatten.*width 10 but got 12"):
        flatten(F.Features.from_inputs(_x((2, 2, 6))))
    conv = F.Conv(3, sketch_dim=8).init(key, (2, 6))
    with pytest.raises(ValueError, match=r"features\.Conv.*call `init`"):
        conv(F.Features.from_inputs(_x((2, 3, 6))))
    for bad in (0, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="sketch_dim"):
            F.Flatten(sketch_dim=bad)
        with pytest.raises((ValueError, TypeError), match="sketch_dim"):
            F.Conv(3, sketch_dim=bad)
    with pytest.raises(ValueError, match=r"features\.Conv.*padding"):
        F.Conv(3, padding="FULL")
    with pytest.raises(ValueError, match=r"features\.AvgPool.*kernel_size"):
        F.AvgPool(0)
    with pytest.raises((ValueError, TypeError), match="parameterization"):
        F.Conv(3, parameterization="mup")
