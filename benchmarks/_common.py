"""What every benchmark script shares: timing, peak memory, fresh processes."""

from __future__ import annotations

import json
import resource
import subprocess
import time


def peak_memory_mb() -> float:
    """The device's peak bytes in use where JAX reports them, else the
    process's peak resident memory (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(run, repeats: int) -> dict:
    """`first_call_seconds` (compilation included) and `seconds` (steady state,
    the best of `repeats` further calls) of `run()`, and the peak memory."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return {
        "seconds": min(times),
        "first_call_seconds": first,
        "peak_memory_mb": peak_memory_mb(),
    }


def run_fresh(command: list[str], labels: dict) -> None:
    """Runs one measurement in a fresh process and prints its JSON line (or
    `labels` with the error, if it failed)."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        errors = [line for line in lines if "Error" in line] or ["failed"]
        print(json.dumps({**labels, "error": errors[-1]}), flush=True)
    else:
        print(done.stdout.strip().splitlines()[-1], flush=True)
