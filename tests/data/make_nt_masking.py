"""Writes `nt_masking.npz`: Neural Tangents 0.6.5 kernels of masked inputs.

Run with Neural Tangents 0.6.5 (jax 0.4.23) installed:

    python tests/data/make_nt_masking.py

Inputs are stored in NT's layout, `(N, *spatial, C)`; entries equal to
`MASK_CONSTANT` are padding (`kernel_fn(..., mask_constant=MASK_CONSTANT)`).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from neural_tangents import stax

jax.config.update("jax_enable_x64", True)

MASK_CONSTANT = -7.5


def decay(d):
    return jnp.exp(-0.5 * d)


def conv_relu_pool():
    # Ragged 1-D sequences; a strided SAME convolution; a global average.
    return stax.serial(
        stax.Conv(16, (3,), padding="SAME", W_std=1.3, b_std=0.2),
        stax.Relu(),
        stax.Conv(16, (2,), strides=(2,), padding="SAME", W_std=1.1, b_std=0.1,
                  parameterization="standard"),
        stax.Erf(),
        stax.GlobalAvgPool(),
        stax.Dense(1, W_std=0.9, b_std=0.1),
    )  # fmt: skip


def pools_2d():
    # Ragged images: average and sum pooling with strides, Flatten, Dense.
    return stax.serial(
        stax.Conv(16, (3, 3), padding="SAME", W_std=1.2, b_std=0.1),
        stax.Relu(),
        stax.AvgPool((2, 2), strides=(2, 1), padding="SAME"),
        stax.Conv(16, (2, 2), padding="VALID", W_std=1.1, b_std=0.2),
        stax.Gelu(),
        stax.SumPool((2, 2), strides=(1, 2), padding="VALID"),
        stax.Flatten(),
        stax.Dense(1, W_std=0.8, b_std=0.1),
    )


def layer_norm_2d():
    # LayerNorm over channels, over channels and one spatial axis, over all.
    return stax.serial(
        stax.Conv(16, (2, 2), padding="SAME", W_std=1.3, b_std=0.3),
        stax.LayerNorm(axis=-1),
        stax.Relu(),
        stax.Conv(16, (3, 3), padding="SAME", W_std=1.1, b_std=0.2),
        stax.LayerNorm(axis=(2, 3)),
        stax.Erf(),
        stax.Conv(16, (1, 1), W_std=1.2, b_std=0.1),
        stax.LayerNorm(axis=(1, 2, 3)),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1, W_std=1.0),
    )


def attention():
    # Softmax attention with tied keys and queries (linear scaling) and
    # positional embeddings, then the 1/sqrt(n) identity attention.
    return stax.serial(
        stax.Conv(16, (1,), W_std=1.2, b_std=0.1),
        stax.GlobalSelfAttention(
            16, 16, 16, 2, linear_scaling=True, W_key_std=0.9, W_value_std=1.1,
            W_query_std=0.8, W_out_std=1.0, b_std=0.2,
            attention_mechanism="SOFTMAX", pos_emb_type="SUM",
            pos_emb_decay_fn=decay, W_pos_emb_std=0.7, val_pos_emb=True,
        ),
        stax.Relu(),
        stax.GlobalSelfAttention(
            16, 16, 16, 2, linear_scaling=False, W_key_std=0.9, W_value_std=1.0,
            W_query_std=1.1, W_out_std=0.9, attention_mechanism="IDENTITY",
            pos_emb_type="CONCAT", W_pos_emb_std=0.5,
        ),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1, W_std=1.0, b_std=0.1),
    )  # fmt: skip


def fan_out():
    # Branches of different receptive fields, summed; pooling; Flatten.
    return stax.serial(
        stax.FanOut(2),
        stax.parallel(
            stax.serial(
                stax.Conv(16, (3,), padding="SAME", W_std=1.3, b_std=0.1),
                stax.Relu(),
                stax.Conv(16, (3,), padding="SAME", W_std=1.1),
            ),
            stax.Conv(16, (1,), W_std=0.9, b_std=0.2),
        ),
        stax.FanInSum(),
        stax.Relu(),
        stax.AvgPool((2,), strides=(2,)),
        stax.Flatten(),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    )


def variants():
    # Transposed and unshared convolutions, and branches concatenated along the
    # sequence.
    return stax.serial(
        stax.ConvTranspose(16, (3,), strides=(2,), padding="SAME", W_std=1.2,
                           b_std=0.1),
        stax.Relu(),
        stax.ConvLocal(16, (3,), padding="SAME", W_std=1.1, b_std=0.1),
        stax.Relu(),
        stax.Conv(16, (3,), strides=(2,), padding="VALID", W_std=1.2, b_std=0.1),
        stax.Relu(),
        stax.FanOut(2),
        stax.parallel(stax.Conv(16, (1,), W_std=1.1),
                      stax.Conv(16, (2,), padding="SAME", W_std=0.9, b_std=0.1)),
        stax.FanInConcat(axis=1),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1, W_std=1.0, b_std=0.1),
    )  # fmt: skip


def flat():
    # Flat inputs: an example is masked only if all its features are.
    return stax.serial(
        stax.Dense(16, W_std=1.4, b_std=0.2),
        stax.Relu(),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    )


def ragged_sequences(rng, n, length, c, lengths):
    x = rng.normal(size=(n, length, c))
    for i, m in enumerate(lengths):
        x[i, m:] = MASK_CONSTANT
    return x


def ragged_images(rng, n, h, w, c, heights, widths):
    x = rng.normal(size=(n, h, w, c))
    for i, (a, b) in enumerate(zip(heights, widths)):
        x[i, a:] = MASK_CONSTANT
        x[i, :, b:] = MASK_CONSTANT
    return x


def inputs(rng, case):
    if case == "conv_relu_pool":
        x1 = ragged_sequences(rng, 3, 7, 3, [7, 4, 2])
        x2 = ragged_sequences(rng, 2, 7, 3, [5, 6])
        x1[0, 3, 1] = MASK_CONSTANT  # one channel alone: zeroed, not masked
        return x1, x2
    if case == "pools_2d":
        return (
            ragged_images(rng, 3, 5, 6, 2, [5, 3, 4], [6, 4, 2]),
            ragged_images(rng, 2, 5, 6, 2, [2, 5], [5, 3]),
        )
    if case == "layer_norm_2d":
        return (
            ragged_images(rng, 2, 4, 5, 2, [4, 2], [3, 5]),
            ragged_images(rng, 2, 4, 5, 2, [3, 4], [4, 2]),
        )
    if case in ("attention", "fan_out", "variants"):
        return (
            ragged_sequences(rng, 3, 6, 2, [6, 3, 4]),
            ragged_sequences(rng, 2, 6, 2, [2, 5]),
        )
    x1 = rng.normal(size=(3, 4))
    x2 = rng.normal(size=(2, 4))
    x1[1] = MASK_CONSTANT  # a fully masked example
    x1[2, 1] = x2[0, 3] = MASK_CONSTANT  # single features: zeroed only
    return x1, x2


CASES = {
    "conv_relu_pool": conv_relu_pool,
    "pools_2d": pools_2d,
    "layer_norm_2d": layer_norm_2d,
    "attention": attention,
    "fan_out": fan_out,
    "variants": variants,
    "flat": flat,
}


def main():
    rng = np.random.default_rng(0)
    arrays = {"mask_constant": np.asarray(MASK_CONSTANT)}
    for case, network in CASES.items():
        x1, x2 = inputs(rng, case)
        _, _, kernel_fn = network()
        k = kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=MASK_CONSTANT)
        k11 = kernel_fn(x1, None, ("nngp", "ntk"), mask_constant=MASK_CONSTANT)
        for name, value in dict(
            x1=x1, x2=x2, nngp=k.nngp, ntk=k.ntk, nngp_11=k11.nngp, ntk_11=k11.ntk
        ).items():
            arrays[f"{case}/{name}"] = np.asarray(value)
    np.savez(Path(__file__).with_name("nt_masking.npz"), **arrays)


if __name__ == "__main__":
    main()
