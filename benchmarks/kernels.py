"""Infinite-width kernel workloads: seconds, first-call seconds, peak memory.

Prints one JSON line per workload:

    {"workload": "fc", "library": "eqtangents", "seconds": ...,
     "first_call_seconds": ..., "peak_memory_mb": ...}

Workloads (float32, NNGP and NTK of the inputs with themselves, `x2=None`):

- `fc`: 10 x (Dense(512, W_std=1.5, b_std=0.05), Relu), Dense(1); 2,048 inputs
  of size 784.
- `cnn_flatten`: 21 x (Conv(1 channel, 3x3, SAME), Relu), Flatten, Dense(1);
  64 images 32x32x3.
- `cnn_pool`: 8 x (Conv(3x3, SAME), Relu), GlobalAvgPool, Dense(1); 8 images
  16x16x3.
- `myrtle5`: the Myrtle-5 kernel of "Neural Kernels Without Tangents"
  (Shankar et al. 2020): (Conv-Relu) x 2, pool, Conv-Relu, pool, Conv-Relu,
  then 2x2 average pools down to 1x1, Flatten, Dense(10); 4 images 32x32x3.
- `deep_compile`: 200 x (Dense(64), Relu) built with `Repeat` (NT:
  `stax.repeat`), Dense(1), on 8 inputs of size 64; its first call is the
  measurement.

Each workload runs in a fresh process so that its peak memory (the device's
peak bytes in use where JAX reports it, else the process's peak resident
memory) is its own. `--library nt` runs the same workloads with Neural
Tangents 0.6.5 (channels last) in an environment with `neural-tangents==0.6.5`
and `jax==0.4.23`; `--quick` shrinks every batch for a smoke test;
`--save-outputs DIR` writes each workload's kernels to
`DIR/WORKLOAD-LIBRARY.npz` (`compare.py` checks the two libraries agree).

    python benchmarks/kernels.py [--library nt] [--workload fc] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import float_type, run_fresh, time_calls, use_x64

WORKLOADS = ("fc", "cnn_flatten", "cnn_pool", "myrtle5", "deep_compile")
BATCH = {"fc": 2048, "cnn_flatten": 64, "cnn_pool": 8, "myrtle5": 4, "deep_compile": 8}
SHAPE = {  # channels first
    "fc": (784,),
    "cnn_flatten": (3, 32, 32),
    "cnn_pool": (3, 16, 16),
    "myrtle5": (3, 32, 32),
    "deep_compile": (64,),
}


def _inputs(workload, quick):
    import numpy as np

    n = 2 if quick else BATCH[workload]
    rng = np.random.default_rng(0)
    return rng.normal(size=(n,) + SHAPE[workload]).astype(float_type())


def _layers(lib, workload):
    """The workload's layers in `lib`'s names (eqtangents or stax)."""
    nt = lib.__name__.endswith("stax")

    def conv(channels):
        return lib.Conv(channels, (3, 3), padding="SAME", W_std=1.5, b_std=0.05)

    def dense(width):
        return lib.Dense(width, W_std=1.5, b_std=0.05)

    if workload == "fc":
        return [dense(512), lib.Relu()] * 10 + [dense(1)]
    if workload == "cnn_flatten":
        return [conv(1), lib.Relu()] * 21 + [lib.Flatten(), dense(1)]
    if workload == "cnn_pool":
        return [conv(16), lib.Relu()] * 8 + [lib.GlobalAvgPool(), dense(1)]
    if workload == "myrtle5":
        # Conv-Relu x [2, 1, 1] with a 2x2 pool after each group, then three
        # more 2x2 pools to 1x1 (32 -> 16 -> 8 -> 4 -> 2 -> 1).
        def pool():
            if nt:
                return lib.AvgPool((2, 2), strides=(2, 2))
            return lib.AvgPool((2, 2), stride=(2, 2))

        layers = []
        for depth in (2, 1, 1):
            layers += [conv(64), lib.Relu()] * depth + [pool()]
        return layers + [pool(), pool(), lib.Flatten(), dense(10)]
    raise ValueError(workload)


def _eqtangents(workload, quick):
    import jax

    import eqtangents as et

    x = jax.numpy.asarray(_inputs(workload, quick))
    if workload == "deep_compile":
        block = et.Serial(et.Dense(64, W_std=1.5, b_std=0.05), et.Relu())
        model = et.Serial(et.Repeat(block, 200), et.Dense(1))
    else:
        model = et.Serial(*_layers(et, workload))
    return lambda: model.kernel(x, None, get=("nngp", "ntk"))


def _neural_tangents(workload, quick):
    import jax
    from neural_tangents import stax

    x = _inputs(workload, quick)
    x = jax.numpy.asarray(x if x.ndim == 2 else x.transpose(0, 2, 3, 1))
    if workload == "deep_compile":
        block = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu())
        _, _, kernel_fn = stax.serial(stax.repeat(block, 200), stax.Dense(1))
    else:
        _, _, kernel_fn = stax.serial(*_layers(stax, workload))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    return lambda: kernel_fn(x, None, get=("nngp", "ntk"))


def measure(library, workload, repeats, quick, save_dir=None):
    make = _eqtangents if library == "eqtangents" else _neural_tangents
    row = {"workload": workload, "library": library}
    save = save_dir and f"{save_dir}/{workload}-{library}.npz"
    return {**row, **time_calls(make(workload, quick), repeats, save)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", choices=("eqtangents", "nt"), default="eqtangents")
    parser.add_argument("--workload", choices=WORKLOADS + ("all",), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--save-outputs", metavar="DIR", help="write the kernels there")
    parser.add_argument(
        "--x64", action="store_true", help="in float64 (a reference result)"
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.x64:
        use_x64()
    if args.in_process:
        row = measure(
            args.library, args.workload, args.repeats, args.quick, args.save_outputs
        )
        print(json.dumps(row))
        return
    for workload in WORKLOADS if args.workload == "all" else (args.workload,):
        command = (
            [
                sys.executable,
                __file__,
                "--in-process",
                f"--library={args.library}",
                f"--workload={workload}",
                f"--repeats={args.repeats}",
            ]
            + (["--quick"] if args.quick else [])
            + (["--x64"] if args.x64 else [])
        )
        if args.save_outputs:
            command.append(f"--save-outputs={args.save_outputs}")
        run_fresh(command, {"workload": workload, "library": args.library})


if __name__ == "__main__":
    main()
