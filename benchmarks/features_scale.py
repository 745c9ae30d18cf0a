"""Embedding 100,000 inputs with `et.features` in bounded memory.

The exact NTK of N = 100,000 inputs is an N x N matrix of 40 GB in float32;
the feature model instead embeds the inputs batch by batch (`features.embed`,
with a progress bar) into an N x m matrix, and kernel ridge regression runs on
the m x m feature Gram matrix (`predict.gradient_descent_mse_features`).

Workload: `[Dense(W_std=1), Relu] x 3 + Dense` (NTK parameterization) on
Gaussian inputs of dimension 64 scaled to unit norm, float32, with ReLU random
features of dimension m (default 1,024). Prints one JSON line with the time
and peak memory of the embedding and of the regression, beside the size the
exact kernel would take.

    python benchmarks/features_scale.py [--n 100000] [--dim 1024] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import peak_memory_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="inputs (100,000)")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="2,000 inputs")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.n

    import jax
    import jax.numpy as jnp
    import numpy as np

    import eqtangents as et

    model = et.Serial(
        *[et.Serial(et.Dense(512, W_std=1.0), et.Relu()) for _ in range(3)],
        et.Dense(1, W_std=1.0),
    )
    fmodel = et.features.from_network(model, feature_dim=args.dim)
    fmodel = fmodel.init(jax.random.key(0), (64,))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.sin(3 * x[:, :1]).astype(np.float32)
    baseline = peak_memory_mb()

    start = time.perf_counter()
    f = et.features.embed(fmodel, x, batch_size=args.batch_size, progress=True)
    jax.block_until_ready(f.ntk_feat)
    embed_seconds = time.perf_counter() - start
    embed_memory = peak_memory_mb()

    start = time.perf_counter()
    predictor = et.predict.gradient_descent_mse_features(f.ntk_feat, y, diag_reg=1e-4)
    fit = jax.block_until_ready(predictor(None, f.ntk_feat[:1000]))
    regression_seconds = time.perf_counter() - start
    train_error = float(jnp.sqrt(jnp.mean((fit - y[:1000]) ** 2)))
    print(
        json.dumps(
            {
                "workload": "features_scale",
                "n": n,
                "feature_dim": args.dim,
                "feature_shape": list(f.ntk_feat.shape),
                "embed_seconds": round(embed_seconds, 3),
                "inputs_per_second": round(n / embed_seconds),
                "regression_seconds": round(regression_seconds, 3),
                "train_rmse_first_1000": round(train_error, 5),
                "peak_memory_mb_before": round(baseline, 1),
                "peak_memory_mb_after_embed": round(embed_memory, 1),
                "peak_memory_mb": round(peak_memory_mb(), 1),
                "exact_kernel_mb": round(n * n * 4 / 2**20, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
