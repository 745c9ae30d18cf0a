"""Masking (`mask_constant`): kernels against Neural Tangents 0.6.5, finite
networks against kernels, masks through the layers, errors, jit and grad."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et
from eqtangents._mask import propagate

NT_MASKING = Path(__file__).with_name("data") / "nt_masking.npz"
C = -7.5  # the constant of `data/make_nt_masking.py`


def _decay(d):
    return jnp.exp(-0.5 * d)


# The networks of `data/make_nt_masking.py`: NT's axes `(N, *spatial, C)` become
# per-example `(C, *spatial)` (LayerNorm axis -1 is 0, spatial axis i is i).
NETWORKS = {
    "conv_relu_pool": lambda: et.Serial(
        et.Conv(16, (3,), padding="SAME", W_std=1.3, b_std=0.2),
        et.Relu(),
        et.Conv(16, (2,), stride=2, padding="SAME", W_std=1.1, b_std=0.1,
                parameterization="standard"),
        et.Erf(),
        et.GlobalAvgPool(),
        et.Dense(1, W_std=0.9, b_std=0.1),
    ),
    "pools_2d": lambda: et.Serial(
        et.Conv(16, (3, 3), padding="SAME", W_std=1.2, b_std=0.1),
        et.Relu(),
        et.AvgPool((2, 2), stride=(2, 1), padding="SAME"),
        et.Conv(16, (2, 2), W_std=1.1, b_std=0.2),
        et.Gelu(),
        et.SumPool((2, 2), stride=(1, 2)),
        et.Flatten(),
        et.Dense(1, W_std=0.8, b_std=0.1),
    ),
    "layer_norm_2d": lambda: et.Serial(
        et.Conv(16, (2, 2), padding="SAME", W_std=1.3, b_std=0.3),
        et.LayerNorm(0),
        et.Relu(),
        et.Conv(16, (3, 3), padding="SAME", W_std=1.1, b_std=0.2),
        et.LayerNorm((0, 2)),
        et.Erf(),
        et.Conv(16, (1, 1), W_std=1.2, b_std=0.1),
        et.LayerNorm((0, 1, 2)),
        et.Relu(),
        et.GlobalAvgPool(),
        et.Dense(1),
    ),
    "attention": lambda: et.Serial(
        et.Conv(16, (1,), W_std=1.2, b_std=0.1),
        et.GlobalSelfAttention(
            16, 16, 16, 2, linear_scaling=True, W_key_std=0.9, W_value_std=1.1,
            W_query_std=0.8, W_out_std=1.0, b_std=0.2,
            attention_mechanism="SOFTMAX", pos_emb_type="SUM",
            pos_emb_decay_fn=_decay, W_pos_emb_std=0.7, val_pos_emb=True,
        ),
        et.Relu(),
        et.GlobalSelfAttention(
            16, 16, 16, 2, linear_scaling=False, W_key_std=0.9, W_value_std=1.0,
            W_query_std=1.1, W_out_std=0.9, attention_mechanism="IDENTITY",
            pos_emb_type="CONCAT", W_pos_emb_std=0.5,
        ),
        et.Relu(),
        et.GlobalAvgPool(),
        et.Dense(1, b_std=0.1),
    ),
    "fan_out": lambda: et.Serial(
        et.FanOut(2),
        et.Parallel(
            et.Serial(
                et.Conv(16, (3,), padding="SAME", W_std=1.3, b_std=0.1),
                et.Relu(),
                et.Conv(16, (3,), padding="SAME", W_std=1.1),
            ),
            et.Conv(16, (1,), W_std=0.9, b_std=0.2),
        ),
        et.FanInSum(),
        et.Relu(),
        et.AvgPool((2,), stride=(2,)),
        et.Flatten(),
        et.Dense(1, W_std=1.1, b_std=0.1),
    ),
    "variants": lambda: et.Serial(
        et.ConvTranspose(16, (3,), stride=2, padding="SAME", W_std=1.2, b_std=0.1),
        et.Relu(),
        et.ConvLocal(16, (3,), padding="SAME", W_std=1.1, b_std=0.1),
        et.Relu(),
        et.Conv(16, (3,), stride=2, W_std=1.2, b_std=0.1),
        et.Relu(),
        et.FanOut(2),
        et.Parallel(
            et.Conv(16, (1,), W_std=1.1),
            et.Conv(16, (2,), padding="SAME", W_std=0.9, b_std=0.1),
        ),
        et.FanInConcat(axis=1),
        et.Relu(),
        et.GlobalAvgPool(),
        et.Dense(1, b_std=0.1),
    ),
    "flat": lambda: et.Serial(
        et.Dense(16, W_std=1.4, b_std=0.2),
        et.Relu(),
        et.Dense(1, W_std=1.1, b_std=0.1),
    ),
}  # fmt: skip


def _nt_inputs(data, case):
    """The stored inputs, channels moved first."""
    return tuple(np.moveaxis(data[f"{case}/{x}"], -1, 1) for x in ("x1", "x2"))


@pytest.mark.parametrize("case", list(NETWORKS))
def test_matches_neural_tangents(case):
    data = np.load(NT_MASKING)
    assert float(data["mask_constant"]) == C
    x1, x2 = _nt_inputs(data, case)
    model = NETWORKS[case]()
    k12 = model.kernel(x1, x2, mask_constant=C)
    k11 = model.kernel(x1, None, mask_constant=C)
    for name, ours in (
        ("nngp", k12.nngp), ("ntk", k12.ntk), ("nngp_11", k11.nngp),
        ("ntk_11", k11.ntk),
    ):  # fmt: skip
        np.testing.assert_allclose(
            ours, data[f"{case}/{name}"], rtol=1e-6, atol=1e-9, err_msg=name
        )


@eqx.filter_jit
def _batched(net, x, **keywords):
    """The finite network on a batch, with `mask_constant=C` by default."""
    keywords = {"mask_constant": C, **keywords}
    return jax.vmap(lambda e: net(e, **keywords))(x)


def _ragged(rng, n, c, length, lengths):
    x = rng.normal(size=(n, c, length))
    for i, m in enumerate(lengths):
        x[i, :, m:] = C
    return jnp.asarray(x)


def test_monte_carlo_of_masked_finite_networks():
    """Finite networks called with `mask_constant` converge to the kernel."""
    rng = np.random.default_rng(0)
    x = np.array(_ragged(rng, 3, 2, 6, [6, 4, 2]))
    x[0, 1, 3] = C  # one channel alone: zeroed, the position stays
    x = jnp.asarray(x)

    def model(width):
        return et.Serial(
            et.Conv(width, (3,), padding="SAME", W_std=1.3, b_std=0.2),
            et.LayerNorm((0, 1)),
            et.Relu(),
            et.AvgPool((2,), stride=(2,), padding="SAME"),
            et.GlobalAvgPool(),
            # Kernels are averaged over the units of this layer.
            et.Dense(width, W_std=1.1, b_std=0.1),
        )

    exact = model(1).kernel(x, None, mask_constant=C)

    def rms(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))

    errors = []
    for width in (16, 64):
        estimate = et.monte_carlo_kernel(
            model(width),
            x,
            None,
            key=jax.random.PRNGKey(0),
            n_samples=256,
            call_kwargs={"mask_constant": C},
        )
        errors.append([rms(estimate.nngp, exact.nngp), rms(estimate.ntk, exact.ntk)])
    errors = np.array(errors)
    # Measured over four keys, RMS relative errors: NNGP 0.036-0.041 ->
    # 0.004-0.016, NTK 0.017-0.025 -> 0.002-0.006 (width x4: the O(1/width)
    # bias dominates at width 16).
    assert (errors[1] < 0.03).all(), errors
    assert (errors[1] < 0.5 * errors[0]).all(), errors


def test_padding_is_invisible():
    """A padded example gives what its unpadded part gives, finite and infinite
    (stride-1 `"SAME"` convolutions pad with zeros, as masking does)."""
    rng = np.random.default_rng(1)
    x = _ragged(rng, 2, 3, 7, [7, 4])

    def model(width):
        return et.Serial(
            et.Conv(width, (3,), padding="SAME", W_std=1.2, b_std=0.1),
            et.LayerNorm((0, 1)),
            et.Relu(),
            et.GlobalSelfAttention(width, width, width, 2, b_std=0.2),
            et.Relu(),
            et.Conv(width, (3,), padding="SAME", W_std=1.1),
            et.LayerNorm(0),
            et.GlobalAvgPool(),
            et.Dense(3, b_std=0.1),
        )

    net = model(8).init(jax.random.PRNGKey(0), (3, 7))
    short = x[1:, :, :4]
    padded = _batched(net, x[1:])
    np.testing.assert_allclose(
        padded, _batched(net, short, mask_constant=None), rtol=1e-10, atol=1e-12
    )
    mask = jnp.arange(7)[None] >= 4
    np.testing.assert_allclose(
        _batched(net, x[1:], mask_constant=None, mask=mask), padded, rtol=1e-12
    )
    k = model(1).kernel(x, None, mask_constant=C)
    k_short = model(1).kernel(short)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(
            getattr(k, name)[1, 1], getattr(k_short, name)[0, 0], rtol=1e-10
        )


def test_masks_follow_the_layers():
    rng = np.random.default_rng(2)
    x = _ragged(rng, 3, 2, 8, [8, 5, 3])
    valid = np.arange(8)[None] < np.array([8, 5, 3])[:, None]

    def masks(*layers):
        k = et.Serial(*layers).kernel(x, x[:2], mask_constant=C)
        return k, np.asarray(k.mask1), np.asarray(k.mask2)

    k, m1, m2 = masks(et.Conv(4, (3,), padding="SAME"))
    np.testing.assert_array_equal(m1, ~valid)
    np.testing.assert_array_equal(m2, ~valid[:2])
    # Covariances vanish wherever a masked position enters.
    assert (k.nngp[2, :, 3:] == 0).all() and (k.nngp[:, 1, :, 5:] == 0).all()
    assert (k.nngp[1, 0, :5, :8] != 0).all()
    diagonal = et.Conv(4, (3,), padding="SAME").kernel(
        x, x[:2], mask_constant=C, diagonal_spatial=True
    )
    np.testing.assert_allclose(
        diagonal.nngp, np.diagonal(k.nngp, axis1=2, axis2=3), rtol=1e-12
    )
    # Strided windows keep the mask of each window's central tap.
    _, m1, _ = masks(et.Conv(4, (3,), stride=2))  # taps 1, 3, 5
    np.testing.assert_array_equal(m1, ~valid[:, 1:7:2])
    _, m1, _ = masks(et.AvgPool((2,), stride=(2,), padding="SAME"))  # taps 0, 2, ..
    np.testing.assert_array_equal(m1, ~valid[:, ::2])
    _, m1, _ = masks(et.ConvTranspose(4, (2,), stride=2))  # any input reaches
    np.testing.assert_array_equal(m1, np.repeat(~valid, 2, axis=1))
    _, m1, _ = masks(et.Index((slice(None), slice(2, 5))))
    np.testing.assert_array_equal(m1, ~valid[:, 2:5])
    # Flat outputs: an example is masked only if all its positions are.
    for head in (et.Flatten(), et.GlobalAvgPool(), et.GlobalSumPool()):
        _, m1, _ = masks(et.Conv(4, (1,)), head)
        np.testing.assert_array_equal(m1, np.zeros(3, bool))
    # Branches: masked where every branch is; concatenation along positions.
    _, m1, _ = masks(et.FanOut(2), et.Parallel(et.Conv(4, (1,)),
                     et.Conv(4, (3,), stride=2)), et.FanInConcat(axis=1))  # fmt: skip
    np.testing.assert_array_equal(
        m1, np.concatenate([~valid, ~valid[:, 1:7:2]], axis=1)
    )
    # The finite network's `output_mask` is the kernel's, example by example.
    model = et.Serial(et.Conv(4, (3,), stride=2), et.Relu(), et.AvgPool((2,)))
    k = model.kernel(x, None, mask_constant=C)
    finite = jax.vmap(lambda m: model.output_mask(m, (2, 8)))(jnp.asarray(~valid))
    np.testing.assert_array_equal(k.mask1, finite)
    assert k.mask2 is None


def test_repeat_diagonal_batch_and_continuation():
    rng = np.random.default_rng(3)
    x = _ragged(rng, 3, 2, 5, [5, 2, 4])
    block = et.Serial(et.Conv(8, (3,), padding="SAME", b_std=0.1), et.Relu())
    head = (et.GlobalAvgPool(), et.Dense(1))
    first = et.Conv(8, (1,))
    repeated = et.Serial(first, et.Repeat(block, 3), *head)
    written = et.Serial(first, block, block, block, *head)
    k = repeated.kernel(x, x[:2], mask_constant=C)
    k_written = written.kernel(x, x[:2], mask_constant=C)
    np.testing.assert_allclose(k.ntk, k_written.ntk, rtol=1e-12)
    diag = written.kernel(x, mask_constant=C, diagonal_batch=True)
    np.testing.assert_allclose(diag.ntk[:2], np.diagonal(k_written.ntk), rtol=1e-12)
    start = first.kernel(x, x[:2], mask_constant=C)  # continued from a Kernel
    rest = et.Serial(et.Repeat(block, 3), *head).kernel(start)
    np.testing.assert_allclose(rest.ntk, k.ntk, rtol=1e-12)
    net = repeated.init(jax.random.PRNGKey(1), (2, 5))
    stacked = net.layers[1].stacked
    blocks = tuple(
        jax.tree.map(lambda a, i=i: a[i] if eqx.is_array(a) else a, stacked)
        for i in range(3)
    )
    net_written = et.Serial(net.layers[0], *blocks, *net.layers[2:])
    y, y_written = _batched(net, x), _batched(net_written, x)
    np.testing.assert_allclose(y, y_written, rtol=1e-12)


def test_without_masks_nothing_changes():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 2, 5)))
    model = et.Serial(
        et.Conv(4, (3,), padding="SAME"), et.LayerNorm((0, 1)), et.Relu(),
        et.AvgPool((2,)), et.GlobalAvgPool(), et.Dense(2),
    )  # fmt: skip
    k = model.kernel(x, x[:1])
    assert k.mask1 is None and k.mask2 is None
    k_masked = model.kernel(x, x[:1], mask_constant=C)  # no entry equals C
    np.testing.assert_allclose(k_masked.ntk, k.ntk, rtol=1e-12)
    net = model.init(jax.random.PRNGKey(0), (2, 5))
    np.testing.assert_allclose(
        _batched(net, x), _batched(net, x, mask_constant=None), rtol=1e-14
    )


def test_nan_constant_jit_grad_and_float32():
    rng = np.random.default_rng(5)
    x = _ragged(rng, 2, 2, 5, [5, 3])
    x_nan = jnp.where(x == C, jnp.nan, x)
    model = et.Serial(
        et.Conv(8, (3,), padding="SAME"), et.LayerNorm((0, 1)), et.Relu(),
        et.GlobalSelfAttention(8, 8, 8, 1), et.Relu(), et.GlobalAvgPool(),
    )  # fmt: skip
    reference = model.kernel(x, None, "ntk", mask_constant=C)
    np.testing.assert_allclose(
        model.kernel(x_nan, None, "ntk", mask_constant=jnp.nan), reference,
        rtol=1e-12,
    )  # fmt: skip

    @jax.jit
    def loss(x, constant, w):
        m = et.Serial(et.Conv(8, (3,), padding="SAME", W_std=w), *model.layers[1:])
        return m.kernel(x, None, "ntk", mask_constant=constant).sum()

    value, (g_x, g_w) = jax.value_and_grad(loss, argnums=(0, 2))(x, C, 1.0)
    np.testing.assert_allclose(value, reference.sum(), rtol=1e-12)
    assert np.isfinite(g_x).all() and np.isfinite(g_w)
    assert (g_x[1, :, 3:] == 0).all()  # padding does not move the kernel
    k32 = model.kernel(x.astype(np.float32), None, "ntk", mask_constant=C)
    assert k32.dtype == jnp.float32
    np.testing.assert_allclose(k32, reference, rtol=1e-4)
    # The finite network: jit and grad through the masked forward pass.
    net = model.init(jax.random.PRNGKey(0), (2, 5))
    f = eqx.filter_jit(lambda n, x: jax.vmap(lambda e: n(e, mask_constant=C))(x))
    grads = eqx.filter_grad(lambda n: f(n, jnp.asarray(x)).sum())(net)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


class _Crop(et.AbstractLayer):
    """Drops the first position, without saying what happens to masks."""

    def __call__(self, x, *, key=None):
        return x[:, 1:]

    def output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] - 1)

    def propagate(self, k):
        return k.map_covariances(
            lambda c, b: c[(slice(None),) * b + (slice(1, None), slice(1, None))]
        ).replace(shape1=self.output_shape(k.shape1),
                  shape2=self.output_shape(k.shape2))  # fmt: skip


def test_errors_name_the_layer_and_the_fix():
    rng = np.random.default_rng(6)
    x = _ragged(rng, 2, 3, 4, [4, 2])
    conv = et.Conv(4, (1,))
    with pytest.raises(
        ValueError, match=r"_Crop does not support masks.*`output_mask`"
    ):
        et.Serial(conv, _Crop()).kernel(x, mask_constant=C)
    with pytest.raises(ValueError, match="ImageResize does not support masks"):
        et.Serial(conv, et.ImageResize((-1, 8), "linear")).kernel(x, mask_constant=C)
    with pytest.raises(ValueError, match="DotGeneral does not support masks"):
        et.Serial(conv, et.DotGeneral(rhs=jnp.ones((4, 4)),
                  dimension_numbers=(((1,), (0,)), ((), ()))),
                  ).kernel(x, mask_constant=C)  # fmt: skip
    # Masks per channel: in the forward pass and in a kernel.
    model = et.Serial(conv, et.GlobalAvgPool())
    net = model.init(jax.random.PRNGKey(0), (3, 4))
    per_channel = x[0] == C
    with pytest.raises(ValueError, match=r"one entry per channel.*all\(axis=0\)"):
        net(x[0], mask=per_channel)
    with pytest.raises(ValueError, match=r"GlobalAvgPool: .*one entry per channel"):
        et.GlobalAvgPool()(x[0], mask=per_channel)
    k = et.Identity().kernel(x, None)
    with pytest.raises(
        ValueError, match=r"Serial: .*one entry per channel.*all\(axis=1\)"
    ):
        model.kernel(k.replace(mask1=x == C))
    with pytest.raises(ValueError, match="`mask_constant` or `mask`, not both"):
        net(x[0], mask_constant=C, mask=jnp.zeros(4, bool))
    with pytest.raises(ValueError, match="pass `mask_constant` with the inputs"):
        model.kernel(k, mask_constant=C)
    with pytest.raises(ValueError, match="`mask_constant` must be one number"):
        model.kernel(x, mask_constant=jnp.ones(2))
    # The central rule leaves unmasked kernels alone.
    assert propagate(conv, k) == conv.propagate(k)
