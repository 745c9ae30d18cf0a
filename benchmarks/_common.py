"""What every benchmark script shares: timing, peak memory, fresh processes."""

from __future__ import annotations

import json
import resource
import subprocess
import time

MIN_SECONDS, MAX_CALLS = 2.0, 100  # short workloads: the best of many calls


def peak_memory_mb() -> float:
    """The device's peak bytes in use where JAX reports them, else the
    process's peak resident memory (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def float_type():
    """NumPy's float64 when JAX runs in 64 bits (`--x64`, for a reference
    result), else float32, the type every workload is timed in."""
    import jax
    import numpy as np

    return np.float64 if jax.config.jax_enable_x64 else np.float32


def use_x64() -> None:
    """Switches JAX to 64 bits (before any array is made)."""
    import jax

    jax.config.update("jax_enable_x64", True)


def save_outputs(path: str, outputs) -> None:
    """Writes the arrays of `outputs` (a pytree of namedtuples or one array) to
    the `.npz` file `path`, each under its field path (`"nngp"`, `"ntk.mean"`),
    so two libraries' results can be compared entry by entry."""
    import jax
    import numpy as np

    leaves, _ = jax.tree_util.tree_flatten_with_path(outputs)

    def part(key):  # a namedtuple field, a dict key or a tuple index
        return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))

    arrays = {}
    for keys, leaf in leaves:
        name = ".".join(part(key) for key in keys)
        arrays[name or "output"] = np.asarray(leaf)
    np.savez(path, **arrays)


def time_calls(run, repeats: int, save: str | None = None) -> dict:
    """`first_call_seconds` (compilation included) and `seconds` (steady state,
    the best of at least `repeats` further calls, and of as many as fit in
    `MIN_SECONDS` for short ones, at most `MAX_CALLS`; None if `repeats=0`) of
    `run()`, and the peak memory. With `save`, the first call's outputs go to
    that `.npz` file."""
    import jax

    start = time.perf_counter()
    outputs = jax.block_until_ready(run())
    first = time.perf_counter() - start
    if save:
        save_outputs(save, outputs)
    del outputs
    times = []
    while repeats and (
        len(times) < repeats or (sum(times) < MIN_SECONDS and len(times) < MAX_CALLS)
    ):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return {
        "seconds": min(times) if times else None,
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
