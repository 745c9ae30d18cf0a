"""Out-of-core kernels: the NNGP and NTK of 40,000 inputs written to memmaps.

Workload: `[Dense(512, W_std=1.5, b_std=0.05), Relu] x 10 + Dense(1)` on
N = 40,000 Gaussian inputs of dimension 784, float32. `et.batch(model.kernel,
batch_size, out=DIR)` computes the upper triangle of the tile grid and writes
both N x N kernels (6.4 GB each) tile by tile to `DIR/nngp.npy` and
`DIR/ntk.npy`. Prints one JSON line with the time, the tiles per second and
the peak resident memory of the process (which stays near one tile's
computation: the kernels live in the files).

    python benchmarks/batch_scale.py [--n 40000] [--batch-size 2000]
        [--devices 1] [--out DIR] [--quick]

`--devices k` forces k CPU devices (`XLA_FLAGS=--xla_force_host_platform_
device_count=k`) and spreads the tiles over them with a `Mesh`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40_000, help="inputs (40,000)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=1, help="forced CPU devices")
    parser.add_argument(
        "--out", help="directory for the memmaps (default: a temporary one)"
    )
    parser.add_argument("--quick", action="store_true", help="4,000 inputs")
    args = parser.parse_args()
    n = 4_000 if args.quick else args.n
    if args.devices > 1:
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"

    import jax
    import numpy as np
    from _common import peak_memory_mb

    import eqtangents as et

    model = et.Serial(
        *[
            et.Serial(et.Dense(512, W_std=1.5, b_std=0.05), et.Relu())
            for _ in range(10)
        ],
        et.Dense(1, W_std=1.5, b_std=0.05),
    )
    x = np.random.default_rng(0).normal(size=(n, 784)).astype(np.float32)
    mesh = None
    if args.devices > 1:
        mesh = jax.make_mesh((jax.device_count(),), ("tiles",))
    out = args.out or tempfile.mkdtemp(prefix="eqtangents-batch-")
    try:
        kernel_fn = et.batch(
            model.kernel, args.batch_size, mesh=mesh, out=out, progress=True
        )
        start = time.perf_counter()
        nngp, ntk = kernel_fn(x, None, get=("nngp", "ntk"))
        seconds = time.perf_counter() - start
        rows = -(-n // args.batch_size)
        tiles = rows * (rows + 1) // 2  # the upper triangle of the tile grid
        check = np.asarray(nngp[-3:, :3])
        print(
            json.dumps(
                {
                    "workload": "batch_scale",
                    "n": n,
                    "batch_size": args.batch_size,
                    "devices": jax.device_count(),
                    "tiles": tiles,
                    "seconds": round(seconds, 2),
                    "tiles_per_second": round(tiles / seconds, 3),
                    "pairs_per_second": round(n * (n + 1) / 2 / seconds),
                    "peak_memory_mb": round(peak_memory_mb(), 1),
                    "kernel_file_mb": round(2 * n * n * 4 / 2**20, 1),
                    "finite": bool(
                        np.isfinite(check).all() and np.isfinite(ntk[-1, -1])
                    ),
                }
            ),
            flush=True,
        )
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
