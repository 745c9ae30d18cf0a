"""Empirical-NTK workloads: seconds and peak memory of each implementation.

Prints one JSON line per (workload, implementation):

    {"workload": "empirical_fc", "library": "eqtangents",
     "implementation": "structured_derivatives", "seconds": ...,
     "first_call_seconds": ..., "peak_memory_mb": ...}

- `empirical_fc`: Dense(512)-Relu-Dense(512)-Relu-Dense(10) on 128 inputs of
  size 784, float32, the full NTK (no trace: all output pairs kept).
- `empirical_cnn`: Conv(32, 3x3, SAME)-Relu-Conv(32, 3x3, SAME)-Relu-Flatten-
  Dense(10) on 32 images of 3 x 16 x 16, float32, no trace.

Each measurement runs in a fresh process so that its peak memory (the device's
peak bytes in use where JAX reports it, the process's peak resident memory on
CPU) is its own. `--library nt` runs the same workloads with Neural Tangents
0.6.5 (channels last), in an environment with `neural-tangents==0.6.5` and
`jax==0.4.23`. Both libraries use the same weights, drawn once with NumPy;
`--save-outputs DIR` writes each NTK to `DIR/WORKLOAD-IMPLEMENTATION-LIBRARY.npz`
(`compare.py` checks the two libraries agree).

    python benchmarks/empirical_ntk.py [--library nt] [--workload empirical_fc]
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import float_type, run_fresh, time_calls, use_x64

IMPLEMENTATIONS = (
    "jacobian_contraction",
    "ntk_vector_products",
    "structured_derivatives",
    "auto",
)
NT_CODES = {
    "jacobian_contraction": 1,
    "ntk_vector_products": 2,
    "structured_derivatives": 3,
    "auto": 0,
}
WORKLOADS = ("empirical_fc", "empirical_cnn")


def _inputs(workload):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (128, 784) if workload == "empirical_fc" else (32, 3, 16, 16)
    return rng.normal(size=shape).astype(float_type())


def _weights(workload):
    """Standard-normal weights in NT's layouts (Dense `(in, out)`, Conv HWIO),
    drawn once so that both libraries compute the NTK of the same network."""
    import numpy as np

    rng = np.random.default_rng(1)
    if workload == "empirical_fc":
        shapes = [(784, 512), (512, 512), (512, 10)]
    else:
        shapes = [(3, 3, 3, 32), (3, 3, 32, 32), (16 * 16 * 32, 10)]
    return [rng.normal(size=shape).astype(float_type()) for shape in shapes]


def network(workload):
    """The workload's eqtangents network, with the shared weights, and inputs."""
    import equinox as eqx
    import jax

    import eqtangents as et

    x = jax.numpy.asarray(_inputs(workload))
    if workload == "empirical_fc":
        model = et.Serial(
            et.Dense(512), et.Relu(), et.Dense(512), et.Relu(), et.Dense(10)
        )
    else:
        model = et.Serial(
            et.Conv(32, (3, 3), padding="SAME"),
            et.Relu(),
            et.Conv(32, (3, 3), padding="SAME"),
            et.Relu(),
            et.Flatten(),
            et.Dense(10),
        )
    net = model.init(jax.random.PRNGKey(1), x.shape[1:])
    weights = _weights(workload)
    if workload == "empirical_fc":
        weights = [w.T for w in weights]
    else:  # HWIO -> OIHW, and NT flattens (H, W, C) where eqtangents does (C, H, W)
        head = weights[2].reshape(16, 16, 32, 10).transpose(3, 2, 0, 1)
        weights = [w.transpose(3, 2, 0, 1) for w in weights[:2]]
        weights.append(head.reshape(10, -1))
    net = eqx.tree_at(
        lambda net: [layer.weight for layer in net.layers if hasattr(layer, "weight")],
        net,
        [jax.numpy.asarray(w) for w in weights],
    )
    return net, x


def _eqtangents(workload, implementation):
    import equinox as eqx

    import eqtangents as et

    net, x = network(workload)

    @eqx.filter_jit
    def ntk(net, x):
        return et.empirical_ntk(
            net, x, None, trace_axes=(), implementation=implementation
        )

    return lambda: ntk(net, x)


def _neural_tangents(workload, implementation):
    import jax
    import neural_tangents as nt
    from neural_tangents import stax

    x = _inputs(workload)
    if workload == "empirical_fc":
        init_fn, apply_fn, _ = stax.serial(
            stax.Dense(512), stax.Relu(), stax.Dense(512), stax.Relu(), stax.Dense(10)
        )
    else:
        x = x.transpose(0, 2, 3, 1)  # NT is channels last
        init_fn, apply_fn, _ = stax.serial(
            stax.Conv(32, (3, 3), padding="SAME"),
            stax.Relu(),
            stax.Conv(32, (3, 3), padding="SAME"),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(10),
        )
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    weights = iter(_weights(workload))
    params = [(next(weights), None) if p else p for p in params]
    ntk_fn = jax.jit(
        nt.empirical_ntk_fn(
            apply_fn,
            trace_axes=(),
            vmap_axes=0,
            implementation=NT_CODES[implementation],
        )
    )
    x = jax.numpy.asarray(x)
    return lambda: ntk_fn(x, None, params)


def measure(library, workload, implementation, repeats, save_dir=None):
    make = _eqtangents if library == "eqtangents" else _neural_tangents
    row = {"workload": workload, "library": library, "implementation": implementation}
    save = save_dir and f"{save_dir}/{workload}-{implementation}-{library}.npz"
    return {**row, **time_calls(make(workload, implementation), repeats, save)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", choices=("eqtangents", "nt"), default="eqtangents")
    parser.add_argument("--workload", choices=WORKLOADS + ("all",), default="all")
    parser.add_argument(
        "--implementation", choices=IMPLEMENTATIONS + ("all",), default="all"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save-outputs", metavar="DIR", help="write the NTKs there")
    parser.add_argument(
        "--x64", action="store_true", help="in float64 (a reference result)"
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.x64:
        use_x64()
    workloads = WORKLOADS if args.workload == "all" else (args.workload,)
    implementations = (
        IMPLEMENTATIONS if args.implementation == "all" else (args.implementation,)
    )
    if args.in_process:
        (workload,), (implementation,) = workloads, implementations
        row = measure(
            args.library, workload, implementation, args.repeats, args.save_outputs
        )
        print(json.dumps(row))
        return
    for workload in workloads:
        for implementation in implementations:
            command = [
                sys.executable,
                __file__,
                "--in-process",
                f"--library={args.library}",
                f"--workload={workload}",
                f"--implementation={implementation}",
                f"--repeats={args.repeats}",
            ] + (["--x64"] if args.x64 else [])
            if args.save_outputs:
                command.append(f"--save-outputs={args.save_outputs}")
            labels = {
                "workload": workload,
                "library": args.library,
                "implementation": implementation,
            }
            run_fresh(command, labels)


if __name__ == "__main__":
    main()
