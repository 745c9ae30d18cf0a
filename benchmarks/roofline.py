"""How close each eqtangents workload runs to this machine's limits.

Prints one JSON line for the machine, then one per workload:

    {"machine": ..., "matmul_gflops": ..., "copy_gbytes_per_s": ...}
    {"workload": "fc", "seconds": ..., "gflop": ..., "gflops": ...,
     "of_matmul_peak": ..., "gbytes": ..., "gbytes_per_s": ...,
     "of_copy_rate": ...}

The work of a workload is XLA's own count for its compiled program
(`cost_analysis()`: two flops per multiply-add of a matrix product, one per
elementwise operation or transcendental; bytes read and written by each fused
kernel, cache hits included, so rates above the copy rate mean the data stays
in cache), plus the LAPACK calls XLA leaves out (`lapack_flop`), and its time
the best of `--repeats` steady-state calls. The machine's limits are measured
here and now: a float32 4000 x 4000 x 1000 matrix product for the arithmetic,
a 256 MB array read and written once for the memory traffic. The workloads
are those of `kernels.py`, `empirical_ntk.py` (`auto`) and `predict_mse.py`,
in float32; `deep_compile` (a first-call measurement) is left out.

    python benchmarks/roofline.py [--workload fc] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time

import empirical_ntk
import kernels
import predict_mse

WORKLOADS = ("fc", "cnn_flatten", "cnn_pool", "myrtle5", "empirical_fc", "predict_mse")


def _best(run, repeats):
    import jax

    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return min(times)


def machine(repeats):
    """Measured float32 matrix-product rate (GFLOP/s) and copy bandwidth (GB/s)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((4000, 1000), jnp.float32)
    b = jnp.ones((1000, 4000), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    seconds = _best(lambda: matmul(a, b), repeats)
    x = jnp.ones((1 << 26,), jnp.float32)  # 256 MB, read once and written once
    copy = jax.jit(lambda x: x + 1)
    copy_seconds = _best(lambda: copy(x), repeats)
    return {
        "machine": platform.processor() or platform.machine(),
        "matmul_gflops": 2 * 4000 * 4000 * 1000 / seconds / 1e9,
        "copy_gbytes_per_s": 2 * x.size * 4 / copy_seconds / 1e9,
    }


def lapack_flop(hlo: str) -> float:
    """Flops of the LAPACK calls XLA does not count: n^3 / 3 per Cholesky of an
    n x n matrix, m^2 k per triangular solve of an m x m system with k columns."""
    flop = 0.0
    for line in hlo.splitlines():
        target = re.search(r'custom_call_target="lapack_\w(potrf|trsm)', line)
        if target is None:
            continue
        result = [int(d) for d in re.search(r"\[([\d,]+)\]", line).group(1).split(",")]
        if target.group(1) == "potrf":
            flop += result[-1] ** 3 / 3
        else:
            constraints = line.split("operand_layout_constraints=")[1]
            m = int(re.search(r"\[(\d+),", constraints).group(1))
            flop += m * result[0] * result[1]
    return flop


def measure(workload, repeats, limits):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import eqtangents as et

    if workload in kernels.WORKLOADS:
        model = et.Serial(*kernels._layers(et, workload))
        args = (model, jnp.asarray(kernels._inputs(workload, False)))

        def fn(model, x):
            return model.kernel(x, None, get=("nngp", "ntk"))

    elif workload == "empirical_fc":
        model, x = empirical_ntk.network(workload)
        args = (model, x)

        def fn(net, x):
            return et.empirical_ntk(net, x, None, trace_axes=(), implementation="auto")

    else:
        args = predict_mse.problem()
        fn = predict_mse.predict
    arrays, static = eqx.partition(args, eqx.is_array)
    compiled = (
        jax.jit(lambda arrays: fn(*eqx.combine(arrays, static))).lower(arrays).compile()
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    seconds = _best(lambda: compiled(arrays), repeats)
    flop = cost.get("flops", 0.0) + cost.get("transcendentals", 0.0)
    flop += lapack_flop(compiled.as_text())
    moved = cost.get("bytes accessed", 0.0)
    return {
        "workload": workload,
        "seconds": seconds,
        "gflop": flop / 1e9,
        "gflops": flop / seconds / 1e9,
        "of_matmul_peak": flop / seconds / 1e9 / limits["matmul_gflops"],
        "gbytes": moved / 1e9,
        "gbytes_per_s": moved / seconds / 1e9,
        "of_copy_rate": moved / seconds / 1e9 / limits["copy_gbytes_per_s"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=WORKLOADS + ("all",), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limits = machine(args.repeats)
    print(json.dumps(limits), flush=True)
    for workload in WORKLOADS if args.workload == "all" else (args.workload,):
        print(json.dumps(measure(workload, args.repeats, limits)), flush=True)


if __name__ == "__main__":
    main()
