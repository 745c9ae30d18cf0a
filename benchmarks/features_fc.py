"""Accuracy and speed of the activation feature maps on a fully connected network.

Workload: `[Dense(W_std=1), Relu] x 3 + Dense` (NTK parameterization, no bias)
on 2,000 Gaussian inputs of dimension 64 scaled to unit norm, float32. For each
feature dimension m (256, 1,024, 4,096) and method of `features.Relu`
(`poly_sketch`, `combined`, `random_features`), every ReLU layer has
`nngp_dim = sketch_dim = m` (the widths of its NNGP and NTK features) and the
method's default `step_dim`. Prints one JSON line per row:

    {"workload": "features_fc", "method": "poly_sketch", "m": 4096,
     "nngp_error": ..., "ntk_error": ..., "seconds": ...,
     "first_call_seconds": ..., "init_seconds": ..., "peak_memory_mb": ...}

`nngp_error` and `ntk_error` are the relative Frobenius errors
`|F F^T - K| / |K|` against the exact kernels (mean over `--seeds` draws of
the sketch), `seconds` the time of embedding the 2,000 inputs after
compilation (best of `--repeats`). A first row gives the exact kernel's time
(`model.kernel`). `--quick` runs 200 inputs and m = 256 only.

    python benchmarks/features_fc.py [--quick] [--seeds 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

from _common import time_calls

METHODS = ("poly_sketch", "combined", "random_features")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--dims", default="256,1024,4096")
    args = parser.parse_args()

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import eqtangents as et

    F = et.features
    n, dims = (
        (200, (256,)) if args.quick else (2000, tuple(map(int, args.dims.split(","))))
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 64))
    x = jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), jnp.float32)

    model = et.Serial(
        *[et.Serial(et.Dense(512, W_std=1.0), et.Relu()) for _ in range(3)],
        et.Dense(1, W_std=1.0),
    )
    kernel_fn = eqx.filter_jit(lambda x: model.kernel(x, None, get=("nngp", "ntk")))
    exact = kernel_fn(x)
    reference = [np.asarray(k, np.float64) for k in exact]
    row = {"workload": "features_fc", "method": "exact_kernel", "n": n}
    print(json.dumps({**row, **time_calls(lambda: kernel_fn(x), args.repeats)}))

    embed = eqx.filter_jit(lambda fm, x: fm(F.Features.from_inputs(x)))
    init = eqx.filter_jit(lambda fm, key: fm.init(key, (64,)))

    def relative(f, k):
        f = np.asarray(f, np.float64)
        return float(np.linalg.norm(f @ f.T - k) / np.linalg.norm(k))

    for m in dims:
        for method in args.methods.split(","):
            relu = F.Relu(method, nngp_dim=m, sketch_dim=m)
            fmodel = F.Serial(
                *[F.Serial(F.Dense(1.0), relu) for _ in range(3)], F.Dense(1.0)
            )
            errors = []
            for seed in range(args.seeds):
                drawn = init(fmodel, jax.random.key(seed))
                f = embed(drawn, x)
                errors.append((relative(f.nngp_feat, reference[0]),
                               relative(f.ntk_feat, reference[1])))  # fmt: skip
            start = time.perf_counter()
            jax.block_until_ready(init(fmodel, jax.random.key(args.seeds)))
            init_seconds = time.perf_counter() - start
            timing = time_calls(functools.partial(embed, drawn, x), args.repeats)
            nngp_error, ntk_error = np.mean(errors, axis=0)
            row = {"workload": "features_fc", "method": method, "m": m, "n": n,
                   "nngp_error": round(float(nngp_error), 4),
                   "ntk_error": round(float(ntk_error), 4), **timing,
                   "init_seconds": init_seconds}  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
