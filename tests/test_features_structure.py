"""`et.features` structural layers (branches, LayerNorm, Aggregate) against the
kernels of the matching eqtangents networks."""

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


@eqx.filter_jit
def _init(fmodel, key, shape):
    return fmodel.init(key, shape)


@eqx.filter_jit
def _embed(fmodel, x, pattern=None):
    return fmodel(F.Features.from_inputs(x, pattern=pattern))


def _exact_kernels(fmodel, x, pattern=None):
    fmodel = _init(fmodel, jax.random.key(0), x.shape[1:])
    return F.kernel(_embed(fmodel, x, pattern))


def _exact_relu():
    return F.Relu("exact")


# ------------------------------------------------------------ residual blocks


def _residual_net(par, pointwise=None):
    """A residual network; `pointwise` (a kernel size) uses 1x1 convolutions on
    spatial inputs, which the feature `Dense` mirrors position by position."""

    def dense(width, w, b):
        if pointwise is None:
            return et.Dense(width, w, b, par)
        return et.Conv(width, pointwise, W_std=w, b_std=b, parameterization=par)

    return et.Serial(
        dense(32, 1.3, 0.2),
        et.FanOut(2),
        et.Parallel(
            et.Serial(dense(48, 1.5, 0.1), et.Relu(), dense(32, 1.1, 0.3)),
            et.Identity(),
        ),
        et.FanInSum(),
        et.Relu(),
        dense(1, 0.9, 0.1),
    )


def _residual_features(par, relu):
    return F.Serial(
        F.Dense(1.3, 0.2, par, out_features=32),
        F.FanOut(2),
        F.Parallel(
            F.Serial(
                F.Dense(1.5, 0.1, par, out_features=48),
                relu(),
                F.Dense(1.1, 0.3, par, out_features=32),
            ),
            F.Identity(),
        ),
        F.FanInSum(),
        relu(),
        F.Dense(0.9, 0.1, par, out_features=1),
    )


@pytest.mark.parametrize("par", ["ntk", "standard"])
def test_residual_block_exact(par):
    x = _x((9, 5))
    k = _residual_net(par).kernel(x, None)
    assert_matches_kernel(_exact_kernels(_residual_features(par, _exact_relu), x), k)


def test_residual_block_exact_on_spatial_inputs():
    x = _x((5, 3, 4), seed=1)
    k = _residual_net("ntk", pointwise=(1,)).kernel(x, None)
    assert k.nngp.shape == (5, 5, 4, 4)
    assert_matches_kernel(_exact_kernels(_residual_features("ntk", _exact_relu), x), k)


def test_fan_in_sum_of_three_linear_branches_is_exact_across_batches():
    # Without activations the features do not depend on the batch, so two
    # batches embedded separately give the cross kernel.
    x1, x2 = _x((6, 4), seed=2), _x((5, 4), seed=3)
    model = et.Serial(
        et.FanOut(3),
        et.Parallel(et.Dense(4, 1.2, 0.1), et.Identity(), et.Dense(4, 0.7)),
        et.FanInSum(),
        et.Dense(1, 1.1, 0.2),
    )
    fmodel = F.Serial(
        F.FanOut(3),
        F.Parallel(F.Dense(1.2, 0.1, out_features=4), F.Identity(), F.Dense(0.7)),
        F.FanInSum(),
        F.Dense(1.1, 0.2),
    ).init(jax.random.key(0), (4,))
    f1 = fmodel(F.Features.from_inputs(x1))
    f2 = fmodel(F.Features.from_inputs(x2))
    assert_matches_kernel(F.kernel(f1, f2), model.kernel(x1, x2))
    assert f1.shape == fmodel.output_shape((4,))


# ------------------------------------------------------------ FanInConcat


def test_fan_in_concat_channels_weights_by_width():
    x = _x((8, 5), seed=4)
    model = et.Serial(
        et.Dense(32, 1.2, 0.1),
        et.FanOut(2),
        et.Parallel(
            et.Serial(et.Dense(48, 1.4), et.Relu(), et.Dense(16, 1.1, 0.2)),
            et.Dense(48, 0.8, 0.3),
        ),
        et.FanInConcat(),
        et.Relu(),
        et.Dense(1, 0.9),
    )
    fmodel = F.Serial(
        F.Dense(1.2, 0.1, out_features=32),
        F.FanOut(2),
        F.Parallel(
            F.Serial(F.Dense(1.4), F.Relu("exact"), F.Dense(1.1, 0.2, out_features=16)),
            F.Dense(0.8, 0.3, out_features=48),
        ),
        F.FanInConcat(),
        F.Relu("exact"),
        F.Dense(0.9),
    )
    assert_matches_kernel(_exact_kernels(fmodel, x), model.kernel(x, None))
    # The weights matter: equal weights give a different kernel.
    head = fmodel.layers[:3]
    equal = _exact_kernels(F.Serial(*head, F.FanInConcat(widths=(1, 1))), x)
    weighted = _exact_kernels(F.Serial(*head, F.FanInConcat()), x)
    assert float(jnp.abs(equal.nngp - weighted.nngp).max()) > 1e-2


@pytest.mark.parametrize("axis", [1, pytest.param(-1, marks=pytest.mark.slow)])
def test_fan_in_concat_spatial_axis(axis):
    x = _x((4, 3, 5), seed=5)
    model = et.Serial(
        et.Conv(16, (1,), W_std=1.3, b_std=0.2),
        et.FanOut(2),
        et.Parallel(
            et.Conv(16, (1,), W_std=1.1, b_std=0.1),
            et.Serial(et.Relu(), et.Conv(16, (1,), W_std=0.7)),
        ),
        et.FanInConcat(axis=axis),
        et.Relu(),
        et.Conv(1, (1,), W_std=0.9, b_std=0.1),
    )
    fmodel = F.Serial(
        F.Dense(1.3, 0.2),
        F.FanOut(2),
        F.Parallel(F.Dense(1.1, 0.1), F.Serial(F.Relu("exact"), F.Dense(0.7))),
        F.FanInConcat(axis=axis),
        F.Relu("exact"),
        F.Dense(0.9, 0.1),
    )
    k = model.kernel(x, None)
    assert k.nngp.shape == (4, 4, 10, 10)
    assert_matches_kernel(_exact_kernels(fmodel, x), k)
    assert fmodel.output_shape((3, 5)).spatial == (10,)


def test_fan_in_concat_along_one_axis_of_an_image():
    x = _x((3, 2, 3, 4), seed=6)
    model = et.Serial(
        et.Conv(8, (1, 1), W_std=1.2),
        et.FanOut(2),
        et.Parallel(et.Conv(8, (1, 1), W_std=1.1, b_std=0.1), et.Identity()),
        et.FanInConcat(axis=2),
        et.Relu(),
    )
    fmodel = F.Serial(
        F.Dense(1.2),
        F.FanOut(2),
        F.Parallel(F.Dense(1.1, 0.1), F.Identity()),
        F.FanInConcat(axis=2),
        F.Relu("exact"),
    )
    k = model.kernel(x, None)
    assert k.nngp.shape == (3, 3, 3, 3, 8, 8)
    assert_matches_kernel(_exact_kernels(fmodel, x), k)


# ------------------------------------------------------------ LayerNorm


def test_layer_norm_flat():
    x = 3 * _x((8, 6), seed=7)
    model = et.Serial(
        et.Dense(32, 1.4, 0.3), et.Relu(), et.Dense(32, 1.1, 0.2),
        et.LayerNorm(), et.Relu(), et.Dense(1, 0.8, 0.1),
    )  # fmt: skip
    fmodel = F.Serial(
        F.Dense(1.4, 0.3), F.Relu("exact"), F.Dense(1.1, 0.2),
        F.LayerNorm(), F.Relu("exact"), F.Dense(0.8, 0.1),
    )  # fmt: skip
    assert_matches_kernel(_exact_kernels(fmodel, x), model.kernel(x, None))


def test_layer_norm_features_have_unit_variance():
    x = 5 * _x((6, 4), seed=8)
    fmodel = F.Serial(F.Dense(2.0, 0.5), F.LayerNorm(eps=0.0))
    f = fmodel.init(jax.random.key(0), (4,))(F.Features.from_inputs(x))
    np.testing.assert_allclose(jnp.sum(f.nngp_feat**2, -1), 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((5, 3, 4), 0),
        ((5, 3, 4), (0, 1)),
        ((3, 2, 3, 4), (0, 1, 2)),
        ((3, 2, 3, 4), (0, 2)),
        pytest.param((3, 2, 3, 4), (-3, -2), marks=pytest.mark.slow),
    ],
)
def test_layer_norm_spatial(shape, axis):
    x = 2 * _x(shape, seed=9)
    ones = (1,) * (len(shape) - 2)
    model = et.Serial(
        et.Conv(16, ones, W_std=1.3, b_std=0.4),
        et.LayerNorm(axis=axis, eps=1e-3),
        et.Relu(),
        et.Conv(16, ones, W_std=1.2, b_std=0.1),
        et.LayerNorm(axis=axis),
    )
    fmodel = F.Serial(
        F.Dense(1.3, 0.4),
        F.LayerNorm(axis=axis, eps=1e-3),
        F.Relu("exact"),
        F.Dense(1.2, 0.1),
        F.LayerNorm(axis=axis),
    )
    k = model.kernel(x, None)
    assert k.nngp.ndim == 2 + 2 * (len(shape) - 2)
    assert_matches_kernel(_exact_kernels(fmodel, x), k)


# ------------------------------------------------------------ Aggregate


def _patterns(n, v, seed):
    """Random weighted graphs: about 40% of the arcs, weights in [0.2, 1.5],
    and self loops."""
    rng = np.random.default_rng(seed)
    arcs = rng.random((n, v, v)) < 0.4
    weights = rng.uniform(0.2, 1.5, (n, v, v))
    return jnp.asarray(np.where(arcs, weights, 0.0) + np.eye(v))


def test_aggregate_linear_network_exact_across_batches():
    x1, x2 = _x((4, 3, 6), seed=10), _x((3, 3, 6), seed=11)
    p1, p2 = _patterns(4, 6, 0), _patterns(3, 6, 1)
    model = et.Serial(
        et.Conv(8, (1,), W_std=1.2, b_std=0.1), et.Aggregate(),
        et.Conv(8, (1,), W_std=0.9, b_std=0.3), et.Aggregate(),
    )  # fmt: skip
    fmodel = F.Serial(
        F.Dense(1.2, 0.1), F.Aggregate(), F.Dense(0.9, 0.3), F.Aggregate()
    )
    fmodel = fmodel.init(jax.random.key(0), (3, 6))
    f1 = fmodel(F.Features.from_inputs(x1, pattern=p1))
    f2 = fmodel(F.Features.from_inputs(x2, pattern=p2))
    k = model.kernel(x1, x2, pattern=(p1, p2))
    assert k.nngp.shape == (4, 3, 6, 6)
    assert_matches_kernel(F.kernel(f1, f2), k)


def test_aggregate_graph_network_exact():
    x, p = _x((5, 3, 6), seed=12), _patterns(5, 6, 2)
    model = et.Serial(
        et.Conv(16, (1,), W_std=1.3, b_std=0.2), et.Relu(), et.Aggregate(),
        et.Conv(16, (1,), W_std=1.1, b_std=0.1), et.Relu(), et.Aggregate(1),
    )  # fmt: skip
    fmodel = F.Serial(
        F.Dense(1.3, 0.2), F.Relu("exact"), F.Aggregate(),
        F.Dense(1.1, 0.1), F.Relu("exact"), F.Aggregate(1),
    )  # fmt: skip
    k = model.kernel(x, None, pattern=(p, None))
    assert_matches_kernel(_exact_kernels(fmodel, x, pattern=p), k)


@pytest.mark.parametrize(
    "aggregate_axis", [None, pytest.param(1, marks=pytest.mark.slow), 2]
)
def test_aggregate_on_images(aggregate_axis):
    x = _x((3, 2, 3, 4), seed=13)
    axes = (1, 2) if aggregate_axis is None else (aggregate_axis,)
    vertices = tuple((3, 4)[a - 1] for a in axes)
    size = int(np.prod(vertices))
    flat = _patterns(3, size, 3)
    nested = flat.reshape((3,) + vertices + vertices)
    model = et.Serial(
        et.Conv(8, (1, 1), W_std=1.2, b_std=0.2), et.Relu(),
        et.Aggregate(aggregate_axis), et.Conv(8, (1, 1), W_std=0.8),
    )  # fmt: skip
    fmodel = F.Serial(
        F.Dense(1.2, 0.2), F.Relu("exact"), F.Aggregate(aggregate_axis), F.Dense(0.8)
    )
    k = model.kernel(x, None, pattern=(nested, None))
    # `Features` holds the flattened adjacency, vertices in row-major order.
    assert_matches_kernel(_exact_kernels(fmodel, x, pattern=flat), k)


# ------------------------------------------------------------ random features


_X_UNIT = _x((12, 6), seed=14)
_X_UNIT = _X_UNIT / jnp.linalg.norm(_X_UNIT, axis=1, keepdims=True)
_EXACT = _residual_net("ntk").kernel(_X_UNIT, None)


@eqx.filter_jit
def _random_kernels(key, m):
    relu = lambda: F.Relu(  # noqa: E731
        "random_features", nngp_dim=m, step_dim=m, sketch_dim=m
    )
    fmodel = _residual_features("ntk", relu).init(key, _X_UNIT.shape[1:])
    return tuple(F.kernel(fmodel(F.Features.from_inputs(_X_UNIT))))


def _mean_errors(m, seeds):
    errs = []
    for s in range(seeds):
        nngp, ntk = _random_kernels(jax.random.key(s), m)
        errs.append(
            (relative_error(nngp, _EXACT.nngp), relative_error(ntk, _EXACT.ntk))
        )
    return np.mean(errs, axis=0)


def test_random_features_through_residual_net_error_falls():
    small = _mean_errors(128, 4)
    large = _mean_errors(2048, 2)
    # 16 times the features: errors fall like 1/sqrt(m), about 4 times.
    assert large[0] < small[0] / 2.5 and large[1] < small[1] / 2.5, (small, large)
    # Measured over more seeds: about (0.057, 0.063) at m = 2048, and unbiased
    # (the average of 24 such kernels is 4.7 times closer).
    assert large[0] < 0.08 and large[1] < 0.08, large


def test_random_feature_shapes_match_output_shape():
    relu = lambda: F.Relu(  # noqa: E731
        "random_features", nngp_dim=64, step_dim=32, sketch_dim=48
    )
    fmodel = _residual_features("ntk", relu)
    shape = fmodel.output_shape((6,))
    f = _embed(_init(fmodel, jax.random.key(0), (6,)), _X_UNIT)
    assert f.shape == shape._replace(width=None) and shape.width == 1
    branches = F.FanOut(2).output_shape((6,))
    assert branches == (F.FeatureShape(6, 0, 6),) * 2
    summed = F.Parallel(F.Dense(1.0, 0.1), F.Identity()).output_shape(branches)
    assert F.FanInSum().output_shape(summed) == F.FeatureShape(13, 7, 6)


# ------------------------------------------------------------ jit and dtypes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_and_dtypes(dtype):
    x = _x((5, 3, 6), seed=15)
    p = _patterns(5, 6, 4)
    relu = lambda: F.Relu(  # noqa: E731
        "random_features", nngp_dim=64, step_dim=64, sketch_dim=64
    )
    fmodel = F.Serial(
        F.Dense(1.3, 0.1, out_features=8),
        F.FanOut(2),
        F.Parallel(F.Serial(relu(), F.Dense(1.1, out_features=8)), F.Identity()),
        F.FanInSum(),
        F.LayerNorm(axis=(0, 1)),
        F.FanOut(2),
        F.Parallel(F.Aggregate(), F.Dense(0.5, out_features=4)),
        F.FanInConcat(),
        F.FanOut(2),
        F.Parallel(F.Identity(), F.Dense(0.7)),
        F.FanInConcat(axis=1),
    )
    fmodel = eqx.filter_jit(fmodel.init)(jax.random.key(0), (3, 6))

    @jax.jit
    def embed(fmodel, x, p):
        return fmodel(F.Features.from_inputs(x, pattern=p))

    out = embed(fmodel, x.astype(dtype), p.astype(dtype))
    # Eager in float64 (jit against no jit), jitted in float64 for float32.
    if dtype == jnp.float64:
        reference = fmodel(F.Features.from_inputs(x, pattern=p))
    else:
        reference = _embed(fmodel, x, p)
    assert out.nngp_feat.dtype == dtype and out.ntk_feat.dtype == dtype
    assert out.shape == fmodel.output_shape((3, 6))._replace(width=None)
    tol = 1e-4 if dtype == jnp.float32 else 1e-12
    for a, b in (
        (out.nngp_feat, reference.nngp_feat),
        (out.ntk_feat, reference.ntk_feat),
    ):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------ errors


def test_errors():
    f = F.Features.from_inputs(_x((4, 3, 5)))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"features.Parallel.*FanOut\(2\)"):
        F.Parallel(F.Identity(), F.Identity())(f)
    with pytest.raises(ValueError, match=r"features.Parallel has 2 branches.*3"):
        F.Serial(F.FanOut(3), F.Parallel(F.Identity(), F.Identity())).init(key, (3, 5))
    with pytest.raises(ValueError, match=r"features.Parallel has 2"):
        F.Parallel(F.Identity(), F.Identity())(F.FanOut(3)(f))
    with pytest.raises((ValueError, TypeError)):
        F.Parallel(F.Identity(), et.Identity())
    with pytest.raises(ValueError, match="features.FanOut"):
        F.FanOut(0)
    with pytest.raises(ValueError, match=r"features.FanInSum.*FanOut"):
        F.FanInSum()(f)
    with pytest.raises(ValueError, match=r"features.FanInSum.*FanOut"):
        F.FanInSum().output_shape((3, 5))
    longer = F.FanInConcat(axis=1)((f, f))  # spatial size 10 next to 5
    with pytest.raises(ValueError, match="features.FanInSum: branches have different"):
        F.FanInSum()((f, longer))
    with pytest.raises(ValueError, match=r"features.FanOut expects one"):
        F.FanOut(2)((f, f))
    with pytest.raises(ValueError, match="features.FanInSum: branches have different"):
        F.FanInSum().output_shape(
            (F.FeatureShape(3, 0, 3, (5,)), F.FeatureShape(3, 0, 3, (6,)))
        )
    with pytest.raises(ValueError, match="channel counts"):
        F.FanInSum().output_shape((F.FeatureShape(3, 0, 3), F.FeatureShape(3, 0, 4)))
    with pytest.raises(ValueError, match=r"features.FanInConcat.*out_features"):
        F.Serial(
            F.FanOut(2), F.Parallel(F.Dense(), F.Identity()), F.FanInConcat()
        ).init(key, (3, 5))
    with pytest.raises(ValueError, match=r"features.FanInConcat.*init"):
        F.FanInConcat()((f, f))
    with pytest.raises(ValueError, match=r"features.FanInConcat: axis 3"):
        F.FanInConcat(axis=3)((f, f))
    with pytest.raises(ValueError, match="differ off the concatenation axis"):
        F.FanInConcat(axis=1)(
            (
                F.Features.from_inputs(_x((4, 3, 5, 2))),
                F.Features.from_inputs(_x((4, 3, 5, 3))),
            )
        )
    with pytest.raises(ValueError, match="features.LayerNorm.*channel axis 0"):
        F.LayerNorm(axis=1)(f)
    with pytest.raises(ValueError, match="features.LayerNorm.*out of range"):
        F.LayerNorm(axis=(0, 2)).init(key, (3, 5))
    with pytest.raises(ValueError, match="features.LayerNorm.*eps"):
        F.LayerNorm(eps=-1.0)
    with pytest.raises(
        ValueError, match=r"features.Aggregate.*from_inputs\(x, pattern"
    ):
        F.Aggregate()(f)
    with pytest.raises(ValueError, match=r"features.Aggregate: the pattern has shape"):
        F.Aggregate()(
            F.Features.from_inputs(_x((4, 3, 5)), pattern=jnp.ones((4, 4, 4)))
        )
    with pytest.raises(ValueError, match=r"\(4, 6, 6\) \(flatten the vertex"):
        F.Aggregate()(
            F.Features.from_inputs(_x((4, 3, 2, 3)), pattern=jnp.ones((4, 2, 2)))
        )
    with pytest.raises(ValueError, match="features.Aggregate supports dense"):
        F.Aggregate(implementation="sparse")
    with pytest.raises(ValueError, match="features.Aggregate needs vertices"):
        F.Aggregate().init(key, (3,))
    with pytest.raises(
        ValueError, match=r"features.Aggregate\(aggregate_axis=\(0,\)\)"
    ):
        F.Aggregate(0).output_shape((3, 5))
