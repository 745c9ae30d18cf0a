"""Accuracy and speed of the feature maps of a small convolutional network.

Workload: `Conv(3x3, SAME), Relu, AvgPool(2), Flatten, Dense` (NTK
parameterization, eqtangents' defaults `W_std=1`, no bias) on 200 Gaussian
images 8x8x3, each scaled to unit norm, float32. For each feature dimension m
(256, 1,024, 4,096) `features.Relu(method, nngp_dim=m, step_dim=m,
sketch_dim=m)` gives the activation's features; `Conv`, `AvgPool` and
`Flatten` are exact (their features are concatenations and averages), unless
`--flatten-sketch` sketches the flattened features to that many times m
columns. Prints one JSON line per row:

    {"workload": "features_conv", "method": "random_features", "m": 1024,
     "flatten_sketch": null, "nngp_error": ..., "ntk_error": ...,
     "seconds": ..., "kernel_seconds": ..., "first_call_seconds": ...,
     "init_seconds": ..., "peak_memory_mb": ...}

`nngp_error` and `ntk_error` are the relative Frobenius errors
`|F F^T - K| / |K|` against the exact kernels (mean over `--seeds` draws),
`seconds` the time of embedding the 200 images after compilation (best of
`--repeats`), `kernel_seconds` that of embedding and forming both 200 x 200
feature Gram matrices. A first row gives the exact kernel's time
(`model.kernel`). `--quick` runs 20 images and m = 256 only.

    python benchmarks/features_conv.py [--quick] [--seeds 2] [--repeats 3]
        [--methods random_features,poly_sketch] [--flatten-sketch 0,4]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import time_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="random_features")
    parser.add_argument("--dims", default="256,1024,4096")
    parser.add_argument(
        "--flatten-sketch",
        default="0",
        help="comma-separated multiples of m for Flatten(sketch_dim); 0: none",
    )
    args = parser.parse_args()

    import equinox as eqx
    import jax
    import numpy as np

    import eqtangents as et

    F = et.features
    n, dims = (
        (20, (256,)) if args.quick else (200, tuple(map(int, args.dims.split(","))))
    )
    shape = (3, 8, 8)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n,) + shape)
    x = x / np.linalg.norm(x.reshape(n, -1), axis=1)[:, None, None, None]
    x = jax.numpy.asarray(x, jax.numpy.float32)

    model = et.Serial(
        et.Conv(1, (3, 3), padding="SAME"), et.Relu(), et.AvgPool(2), et.Flatten(),
        et.Dense(1),
    )  # fmt: skip
    kernel_fn = eqx.filter_jit(lambda x: model.kernel(x, None, get=("nngp", "ntk")))
    reference = [np.asarray(k, np.float64) for k in kernel_fn(x)]
    row = {"workload": "features_conv", "method": "exact_kernel", "n": n}
    print(
        json.dumps({**row, **time_calls(lambda: kernel_fn(x), args.repeats)}),
        flush=True,
    )

    embed = eqx.filter_jit(lambda fm, x: fm(F.Features.from_inputs(x)))
    gram = eqx.filter_jit(lambda fm, x: tuple(F.kernel(fm(F.Features.from_inputs(x)))))
    init = eqx.filter_jit(lambda fm, key: fm.init(key, shape))

    def relative(k, exact):
        k = np.asarray(k, np.float64)
        return float(np.linalg.norm(k - exact) / np.linalg.norm(exact))

    for m in dims:
        for method in args.methods.split(","):
            for factor in map(int, args.flatten_sketch.split(",")):
                fmodel = F.Serial(
                    F.Conv((3, 3), padding="SAME"),
                    F.Relu(method, nngp_dim=m, step_dim=m, sketch_dim=m),
                    F.AvgPool(2),
                    F.Flatten(sketch_dim=factor * m if factor else None),
                    F.Dense(),
                )
                errors = []
                for seed in range(args.seeds):
                    drawn = init(fmodel, jax.random.key(seed))
                    nngp, ntk = gram(drawn, x)
                    errors.append((relative(nngp, reference[0]),
                                   relative(ntk, reference[1])))  # fmt: skip
                start = time.perf_counter()
                jax.block_until_ready(init(fmodel, jax.random.key(args.seeds)))
                init_seconds = time.perf_counter() - start
                timing = time_calls(lambda drawn=drawn: embed(drawn, x), args.repeats)
                kernel_timing = time_calls(
                    lambda drawn=drawn: gram(drawn, x), args.repeats
                )
                nngp_error, ntk_error = np.mean(errors, axis=0)
                row = {"workload": "features_conv", "method": method, "m": m, "n": n,
                       "flatten_sketch": factor * m if factor else None,
                       "nngp_error": round(float(nngp_error), 4),
                       "ntk_error": round(float(ntk_error), 4), **timing,
                       "kernel_seconds": kernel_timing["seconds"],
                       "init_seconds": init_seconds}  # fmt: skip
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
