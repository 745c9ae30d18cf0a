"""The catalogue of bad inputs: each raises an error naming the layer or the
argument and the fix (the list is in `docs/guarantees.md`)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et
from eqtangents import _checks

X = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
IMAGES = jnp.linspace(-1.0, 1.0, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
MLP = et.Serial(et.Dense(8), et.Relu(), et.Dense(1))
CNN = et.Serial(et.Conv(8, (3, 3)), et.Relu(), et.Flatten(), et.Dense(1))

SHAPE_ERRORS = [
    (
        "rank one input",
        lambda: MLP.kernel(jnp.ones(4)),
        r"Serial.kernel: `x1`.*x\[None\]",
    ),
    (
        "image into Dense",
        lambda: MLP.kernel(IMAGES),
        r"Dense expects flat.*et.Flatten\(\)",
    ),
    ("flat into Conv", lambda: CNN.kernel(X), r"Conv expects.*spatial axis.*et.Dense"),
    (
        "x1, x2 trailing shapes",
        lambda: MLP.kernel(X, jnp.ones((2, 5))),
        r"`x2` has \(5,\)",
    ),
    ("empty channel axis", lambda: MLP.kernel(jnp.ones((3, 0))), r"empty axis"),
    (
        "window larger than input",
        lambda: et.Conv(4, (9, 9)).kernel(IMAGES),
        r"Conv: the window spans 9.*padding='SAME'",
    ),
    (
        "tuple x1, single x2",
        lambda: et.Parallel(et.Dense(1), et.Dense(1)).kernel((X, X), X),
        r"`x2` must be a tuple",
    ),
]

GAUSSIAN_ERRORS = [
    ("activation on the inputs", lambda: et.Relu().kernel(X), r"Relu needs Gaussian"),
    (
        "activation after activation",
        lambda: et.Serial(et.Dense(8), et.Relu(), et.Erf()).kernel(X),
        r"Erf needs Gaussian.*affine layer.*monte_carlo_kernel.*empirical_kernel",
    ),
    (
        "LayerNorm after an activation",
        lambda: et.Serial(et.Dense(8), et.Relu(), et.LayerNorm()).kernel(X),
        r"LayerNorm needs Gaussian",
    ),
]

SIZE_ERRORS = [
    ("Dense(0)", lambda: et.Dense(0), r"Dense: `out_features` must be a positive"),
    ("Dense(-3)", lambda: et.Dense(-3), r"Dense: `out_features` must be a positive"),
    ("Conv(0)", lambda: et.Conv(0, (3, 3)), r"Conv: `out_channels`"),
    ("zero window", lambda: et.Conv(4, (0, 3)), r"Conv: `kernel_size`"),
    ("zero stride", lambda: et.AvgPool((2, 2), stride=(0, 1)), r"AvgPool: `stride`"),
    ("keep probability 0", lambda: et.Dropout(0.0), r"Dropout: `rate`.*rate=1 - p"),
    ("negative W_std", lambda: et.Dense(4, W_std=-1.0).kernel(X), r"Dense: `W_std`"),
]

GET_ERRORS = [
    (
        "kernel",
        lambda: MLP.kernel(X, None, "ntkk"),
        r"Unknown kernel 'ntkk'.*'nngp', 'ntk'",
    ),
    (
        "empirical_kernel",
        lambda: et.empirical_kernel(MLP.init(jax.random.key(0), (4,)), X, None, "ntkk"),
        r"Unknown kernel 'ntkk'",
    ),
    (
        "monte_carlo_kernel",
        lambda: et.monte_carlo_kernel(
            MLP, X, None, "nggp", key=jax.random.key(0), n_samples=2
        ),
        r"Unknown kernel 'nggp'",
    ),
]

STRUCTURE_ERRORS = [
    (
        "Parallel branch count",
        lambda: et.Serial(et.FanOut(3), et.Parallel(et.Dense(1), et.Dense(1))).kernel(
            X
        ),
        r"Parallel has 2 branches but receives 3.*FanOut\(2\)",
    ),
    (
        "FanInSum of one input",
        lambda: et.Serial(et.Dense(3), et.FanInSum()).kernel(X),
        r"FanInSum combines several branches.*FanOut and Parallel",
    ),
    (
        "FanInSum of unequal branches",
        lambda: et.Serial(
            et.FanOut(2), et.Parallel(et.Identity(), et.Dense(2)), et.FanInSum()
        ).kernel(X),
        r"FanInSum: branches have different shapes.*FanInConcat",
    ),
    (
        "forward pass before init",
        lambda: et.Dense(3)(jnp.ones(4)),
        r"Dense has no weights yet.*model.init",
    ),
    (
        "input of the wrong width",
        lambda: et.Dense(3).init(jax.random.key(0), (4,))(jnp.ones(5)),
        r"Dense: the weights were drawn for inputs of 4 channels.*model.init",
    ),
    (
        "conv input of the wrong width",
        lambda: et.Conv(3, (3, 3)).init(jax.random.key(0), (2, 8, 8))(IMAGES[0]),
        r"Conv: the weights were drawn for inputs of 2 channels",
    ),
    (
        "a layer without a forward pass",
        lambda: et.Serial(et.Dense(8), et.ExpNormalized()).init(
            jax.random.key(0), (4,)
        )(X[0]),
        r"ExpNormalized is defined by its kernel only.*model.kernel",
    ),
    (
        "a layer without features",
        lambda: et.features.from_network(
            et.Serial(et.Dense(4), et.GlobalSelfAttention(4, 4, 4, 1))
        ),
        r"no feature layer for et.GlobalSelfAttention.*by hand",
    ),
]

CATALOGUE = SHAPE_ERRORS + GAUSSIAN_ERRORS + SIZE_ERRORS + GET_ERRORS + STRUCTURE_ERRORS


@pytest.mark.parametrize(
    "make, message", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_bad_input_names_the_layer_and_the_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_inputs_are_refused(bad):
    x = X.at[2, 1].set(bad)
    with pytest.raises(ValueError, match=r"`x1` has 1 NaN or infinite.*example 2"):
        MLP.kernel(x, None)
    with pytest.raises(ValueError, match=r"`x2` has 1 NaN.*mask_constant"):
        MLP.kernel(X, x, "ntk")


def test_nan_as_a_mask_constant_is_not_an_error():
    x = jnp.ones((2, 3, 5)).at[0, :, 3:].set(jnp.nan)
    model = et.Serial(et.Conv(4, (3,), padding="SAME"), et.Relu(), et.GlobalAvgPool())
    k = model.kernel(x, None, "nngp", mask_constant=jnp.nan)
    assert np.isfinite(k).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.kernel(x.at[1, 0, 0].set(jnp.inf), None, mask_constant=jnp.nan)


def test_non_finite_inputs_under_jit_raise_instead_of_returning_nan():
    run = eqx.filter_jit(lambda x: MLP.kernel(x, None, "ntk"))
    assert np.isfinite(run(X)).all()
    with pytest.raises(Exception, match="the kernel has NaN or infinite entries"):
        jax.block_until_ready(run(X.at[0, 0].set(jnp.nan)))
    grad = jax.grad(lambda x: MLP.kernel(x, None, "ntk").sum())
    assert np.isfinite(grad(X)).all()
    with pytest.raises(Exception, match="the kernel has NaN or infinite entries"):
        jax.block_until_ready(grad(X.at[0, 0].set(jnp.nan)))


def test_overflow_is_an_error_that_suggests_float64():
    block = et.Serial(et.Dense(8, W_std=3.0, b_std=0.1), et.Relu())
    chaotic = et.Serial(et.Repeat(block, 200), et.Dense(1))
    x32 = X.astype(jnp.float32)
    with pytest.raises(ValueError, match=r"overflowed.*chaotic.*jax_enable_x64"):
        chaotic.kernel(x32, None, "ntk")
    assert np.isfinite(chaotic.kernel(X.astype(jnp.float64), None, "ntk")).all()
    with pytest.raises(ValueError, match=r"overflowed.*`Exp`"):
        et.Serial(et.Dense(1, W_std=60.0), et.Exp()).kernel(X, None, "nngp")
    with pytest.raises(ValueError, match="NaN or infinite entries"):
        et.Dense(4, W_std=float("nan")).kernel(X, None, "nngp")


def test_a_kernel_too_large_for_memory_is_refused_with_a_batch_size(monkeypatch):
    x = jnp.linspace(-1.0, 1.0, 200 * 4).reshape(200, 4)
    direct = MLP.kernel(x, None, "ntk")
    monkeypatch.setattr(_checks, "available_memory", lambda: (10**6, "a small device"))
    with pytest.raises(ValueError, match=r"200 x 200 examples.*batch_size=(\d+)") as e:
        MLP.kernel(x, None, "ntk")
    tile = int(re.search(r"batch_size=(\d+)", str(e.value)).group(1))
    assert 1 <= tile < 200
    np.testing.assert_allclose(MLP.kernel(x, None, "ntk", batch_size=tile), direct)
    # Full spatial covariances also suggest the spatial diagonal.
    pooled = et.Serial(et.Conv(4, (3, 3)), et.Relu(), et.GlobalAvgPool())
    with pytest.raises(ValueError, match=r"diagonal_spatial=True"):
        pooled.kernel(jnp.ones((20, 3, 8, 8)), None)


def test_real_memory_limit_refuses_a_huge_kernel_before_allocating():
    with pytest.raises(ValueError, match=r"needs about .* GB.*batch_size="):
        huge = jax.ShapeDtypeStruct((10**6, 3, 32, 32), jnp.float32)
        jax.eval_shape(lambda x: CNN.kernel(x, None), huge)  # nothing allocated


def test_channels_last_images_get_a_warning():
    with pytest.warns(UserWarning, match=r"jnp.moveaxis\(x, -1, 1\)"):
        CNN.kernel(jnp.ones((2, 8, 8, 3)), None, "nngp")


def test_a_non_layer_in_serial_is_refused():
    # With jaxtyping's import hook (as in this test suite) the annotation
    # `*layers: AbstractLayer` refuses it first; without, the ValueError does.
    with pytest.raises((ValueError, TypeError), match=r"Serial"):
        et.Serial(et.Dense(3), jnp.tanh)
    with pytest.raises(ValueError, match=r"Serial: item 1 is .*empirical_kernel"):
        et.Serial.__init__.__wrapped__(object.__new__(et.Serial), et.Dense(3), jnp.tanh)
