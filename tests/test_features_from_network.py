"""`et.features.from_network`: feature models built from eqtangents networks
reproduce their kernels."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

from ._features_checks import assert_matches_kernel, relative_error

F = et.features


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@eqx.filter_jit
def _kernels(fmodel, key, x, pattern=None):
    fmodel = fmodel.init(key, x.shape[1:])
    return tuple(F.kernel(fmodel(F.Features.from_inputs(x, pattern=pattern))))


def _residual(par="ntk"):
    return et.Serial(
        et.Dense(32, 1.3, 0.2, par),
        et.FanOut(2),
        et.Parallel(
            et.Serial(
                et.Dense(48, 1.5, 0.1, par), et.Relu(), et.Dense(32, 1.1, 0.3, par)
            ),
            et.Identity(),
        ),
        et.FanInSum(),
        et.LayerNorm(),
        et.Relu(),
        et.Dense(1, 0.9, 0.1, par),
    )


@pytest.mark.parametrize("par", ["ntk", "standard"])
def test_exact_residual_network(par):
    x = _x((8, 5))
    model = _residual(par)
    fmodel = F.from_network(model, method="exact")
    relu = fmodel.layers[2].layers[0].layers[1]
    assert isinstance(relu, F.Relu) and relu.output_shape((4,)).nngp is None
    assert_matches_kernel(_kernels(fmodel, jax.random.key(0), x), model.kernel(x, None))


def test_exact_concat_repeat_and_graph_network():
    x = _x((5, 3, 6), seed=1)
    rng = np.random.default_rng(2)
    p = jnp.asarray((rng.random((5, 6, 6)) < 0.4) * rng.uniform(0.2, 1.5, (5, 6, 6)))
    block = et.Serial(et.Conv(16, (1,), W_std=1.2, b_std=0.1), et.Relu())
    model = et.Serial(
        et.Repeat(block, 2),
        et.Aggregate(),
        et.FanOut(2),
        et.Parallel(
            et.Conv(8, (1,), W_std=1.1), et.Conv(24, (1,), W_std=0.7, b_std=0.2)
        ),
        et.FanInConcat(),
        et.LayerNorm(axis=(0, 1), eps=1e-3),
        et.Relu(),
        et.Aggregate(aggregate_axis=1),
    )
    fmodel = F.from_network(model, method="exact")
    assert len(fmodel.layers[0].layers) == 2  # Repeat unrolled
    assert_matches_kernel(
        _kernels(fmodel, jax.random.key(0), x, p),
        model.kernel(x, None, pattern=(p, None)),
    )


def test_repeat_is_unrolled_with_a_position_per_copy():
    x = _x((7, 4), seed=5)
    block = et.Serial(et.Dense(16, 1.4, 0.2), et.Relu())
    model = et.Serial(et.Repeat(block, 3), et.Dense(1, 0.8, 0.1))
    fmodel = F.from_network(
        model, method="exact", per_layer={2: dict(W_std=2.0), 6: dict(b_std=0.3)}
    )
    copies = fmodel.layers[0].layers
    assert len(copies) == 3 and [c.layers[0].W_std for c in copies] == [1.4, 2.0, 1.4]
    assert fmodel.layers[1].b_std == 0.3
    # The overrides change the kernel: it is that of the edited network.
    k = et.Serial(et.Dense(16, 1.4, 0.2), et.Relu(), et.Dense(16, 2.0, 0.2), et.Relu())
    k = et.Serial(k, block, et.Dense(1, 0.8, 0.3)).kernel(x, None)
    assert_matches_kernel(_kernels(fmodel, jax.random.key(0), x), k)
    fmodel = F.from_network(model, method="exact")
    assert_matches_kernel(_kernels(fmodel, jax.random.key(0), x), model.kernel(x, None))


_X_UNIT = _x((10, 6), seed=3)
_X_UNIT = _X_UNIT / jnp.linalg.norm(_X_UNIT, axis=1, keepdims=True)


def test_random_features_error_falls_with_feature_dim():
    model = _residual()
    exact = model.kernel(_X_UNIT, None)

    def errors(m, seeds):
        fmodel = F.from_network(model, feature_dim=m)
        out = []
        for s in range(seeds):
            nngp, ntk = _kernels(fmodel, jax.random.key(s), _X_UNIT)
            out.append(
                (relative_error(nngp, exact.nngp), relative_error(ntk, exact.ntk))
            )
        return np.mean(out, axis=0)

    small, large = errors(128, 4), errors(2048, 2)
    assert large[0] < small[0] / 2.5 and large[1] < small[1] / 2.5, (small, large)
    assert large[0] < 0.08 and large[1] < 0.08, large


def test_feature_dim_and_per_layer_sizes():
    relu = et.Relu()
    model = et.Serial(et.Dense(16, 1.2, 0.1), relu, et.Dense(16), relu, et.Dense(1))

    def widths(fmodel):
        """The (NNGP, NTK) widths after each layer."""
        shape, out = F.FeatureShape(5, 0, 5), []
        for layer in fmodel.layers:
            shape = layer.output_shape(shape)
            out.append(shape[:2])
        return out

    fmodel = F.from_network(model, feature_dim=64)
    assert widths(fmodel) == [(6, 6), (64, 64), (64, 128), (64, 64), (64, 128)]
    assert fmodel.layers[0].out_features == 16 and fmodel.layers[0].b_std == 0.1
    fmodel = F.from_network(
        model,
        feature_dim=64,
        per_layer={
            et.Relu: dict(sketch_dim=16, nngp_dim=8),
            relu: dict(nngp_dim=48),
            3: dict(nngp_dim=32),
            4: dict(b_std=0.5),
        },
    )
    assert widths(fmodel) == [(6, 6), (48, 16), (48, 64), (32, 16), (33, 49)]
    assert fmodel.layers[4].b_std == 0.5


@pytest.mark.parametrize("alias", [False, True])
def test_abrelu_family(alias, monkeypatch):
    if alias:  # as if the feature layers of their own names did not exist
        monkeypatch.delattr(F, "LeakyRelu")
        monkeypatch.delattr(F, "Abs")
    x = _x((6, 4), seed=4)
    for act in (et.LeakyRelu(0.3), et.Abs(), et.ABRelu(-0.5, 1.5)):
        model = et.Serial(et.Dense(8, 1.3, 0.1), act, et.Dense(1, 0.8))
        fmodel = F.from_network(model, method="exact")
        if alias or isinstance(act, et.ABRelu):
            assert type(fmodel.layers[1]) is F.ABRelu
        assert_matches_kernel(
            _kernels(fmodel, jax.random.key(0), x), model.kernel(x, None)
        )


@pytest.mark.parametrize("head", ["global_avg_pool", "flatten"])
def test_exact_convolutional_networks(head):
    x = _x((4, 2, 6), seed=6)
    model = et.Serial(
        et.Conv(8, (3,), padding="SAME", W_std=1.4, b_std=0.1),
        et.Erf(),
        et.AvgPool((2,), stride=(2,)),
        et.Conv(8, (2,), W_std=1.2, b_std=0.2, parameterization="standard"),
        et.Gelu(),
        et.GlobalAvgPool() if head == "global_avg_pool" else et.Flatten(),
        et.Dense(1, 0.9, 0.1),
    )
    fmodel = F.from_network(model, method="exact")
    assert_matches_kernel(_kernels(fmodel, jax.random.key(0), x), model.kernel(x, None))


def test_hyperparameters_the_feature_layer_lacks(monkeypatch):
    # Stand-in feature layer without Erf's hyperparameters `a`, `b`, `c`.
    monkeypatch.setattr(F, "Erf", F.Identity)
    assert isinstance(F.from_network(et.Erf()), F.Identity)  # defaults: fine
    with pytest.raises(ValueError, match=r"layer 0 \(et.Erf\).*no `a`.*a=2.0"):
        F.from_network(et.Erf(a=2.0))
    # Forward-pass-only options and the weights of initialised layers are ignored.
    assert isinstance(F.from_network(et.Gelu(approximate=True)), F.Gelu)
    dense = et.Dense(3, 1.5, in_features=4, key=jax.random.key(0))
    assert F.from_network(dense).W_std == 1.5


def test_errors():
    with pytest.raises(ValueError, match="no feature layer for et.FanInProd"):
        F.from_network(
            et.Serial(
                et.FanOut(2), et.Parallel(et.Dense(4), et.Dense(4)), et.FanInProd()
            )
        )
    with pytest.raises(ValueError, match=r"layer 1 \(et.GlobalSelfAttention\)"):
        F.from_network(et.Serial(et.Dense(4), et.GlobalSelfAttention(4, 4, 4, 2)))
    model = et.Serial(et.Dense(4), et.Relu(), et.Dense(1))
    with pytest.raises(ValueError, match=r"keys \[7\] match no layer.*3 layers"):
        F.from_network(model, per_layer={7: dict(nngp_dim=8)})
    with pytest.raises(ValueError, match=r"keys \[<class.*Erf"):
        F.from_network(model, per_layer={et.Erf: dict(nngp_dim=8)})
    with pytest.raises(ValueError, match="features.Relu does not take"):
        F.from_network(model, per_layer={1: dict(width=8)})
    with pytest.raises(ValueError, match="per_layer` key"):
        F.from_network(model, per_layer={"relu": dict(nngp_dim=8)})
    with pytest.raises((ValueError, TypeError), match="method"):
        F.from_network(model, method="nystrom")
    with pytest.raises(ValueError, match="feature_dim"):
        F.from_network(model, feature_dim=0)
    with pytest.raises((ValueError, TypeError)):
        F.from_network(F.Dense())
    with pytest.raises(ValueError, match="features.Aggregate supports dense"):
        F.from_network(et.Aggregate(implementation="sparse"))
