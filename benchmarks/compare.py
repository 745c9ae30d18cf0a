"""Runs the benchmark workloads with eqtangents and with Neural Tangents 0.6.5
on this machine, one after the other, and prints a table of the ratios.

    python benchmarks/compare.py --nt-python PATH [--repeats 3]

`PATH` is the Python of an environment with `neural-tangents==0.6.5` and
`jax==0.4.23` (`nox -s compare` makes one). Each workload runs in a fresh
process per library, so peak memories are each library's own. Prints every
JSON line as it arrives, then the table: seconds (steady state, best of
`--repeats`), first-call seconds (compilation included) and peak memory, with
the ratio eqtangents / NT for each.

Every workload also saves its results (kernels, empirical NTKs, predictions and
the kernels behind them), and the last column is how far eqtangents' are from
NT's: the largest `|ours - NT|` over all entries of all outputs, relative to the
largest `|NT|` of the same array, i.e. agreement to `rtol` at the kernel's
scale. (Entrywise relative differences are printed too; they are not a fair
test for entries that are sums with cancellation, like the near-zero
off-diagonal output pairs of an empirical NTK, which two float32 orders of
summation do not reproduce.) Agreement below `--rtol` (default 1e-5) is marked
`ok`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCRIPTS = ("kernels.py", "empirical_ntk.py", "predict_mse.py")
METRICS = ("seconds", "first_call_seconds", "peak_memory_mb")


def _run(python, script, library, repeats, save_dir) -> list[dict]:
    command = [python, str(HERE / script), f"--library={library}"]
    command += [f"--repeats={repeats}", f"--save-outputs={save_dir}"]
    done = subprocess.run(command, capture_output=True, text=True)
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows.append(row)
            print(line, flush=True)
    if done.returncode != 0 or not rows:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        rows.append({"script": script, "library": library, "error": tail[0]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _key(row: dict) -> tuple:
    return row.get("workload"), row.get("implementation")


def _difference(save_dir: Path, key: tuple) -> tuple[float, float] | None:
    """(scaled, entrywise) largest relative differences between the outputs the
    two libraries saved for workload `key`, or None if either is missing."""
    stem = "-".join(part for part in key if part)
    paths = [save_dir / f"{stem}-{library}.npz" for library in ("eqtangents", "nt")]
    if not all(path.exists() for path in paths):
        return None
    ours, theirs = (np.load(path) for path in paths)
    scaled = entrywise = 0.0
    for name in theirs.files:
        a, b = ours[name].astype(np.float64), theirs[name].astype(np.float64)
        if a.shape != b.shape:
            raise ValueError(f"{stem}: {name} is {a.shape} here, {b.shape} in NT")
        gap = np.abs(a - b)
        scaled = max(scaled, gap.max() / np.abs(b).max())
        with np.errstate(divide="ignore", invalid="ignore"):
            entrywise = max(entrywise, np.nanmax(np.where(gap > 0, gap / np.abs(b), 0)))
    return scaled, entrywise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nt-python", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--script", choices=SCRIPTS, action="append")
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args()
    ours, theirs = {}, {}
    save_dir = Path(tempfile.mkdtemp(prefix="eqtangents-compare-"))
    for script in args.script or SCRIPTS:
        for row in _run(sys.executable, script, "eqtangents", args.repeats, save_dir):
            ours[_key(row)] = row
        for row in _run(args.nt_python, script, "nt", args.repeats, save_dir):
            theirs[_key(row)] = row
    header = f"{'workload':<40}" + "".join(f"{m:>30}" for m in METRICS)
    header += f"{'|ours - NT| / |NT| (entrywise)':>36}"
    print("\n" + header + "\n" + "-" * len(header))
    for key, row in ours.items():
        name = "/".join(part for part in key if part)
        other = theirs.get(key, {})
        cells = []
        for metric in METRICS:
            a, b = row.get(metric), other.get(metric)
            if a is None or b is None:
                cells.append(f"{'n/a':>30}")
            else:
                cells.append(f"{a:>9.3f} / {b:>9.3f} = {a / b:>6.2f}")
        difference = _difference(save_dir, key)
        if difference is None:
            cells.append(f"{'n/a':>36}")
        else:
            scaled, entrywise = difference
            verdict = "ok" if scaled <= args.rtol else "DIFFERS"
            cells.append(f"{scaled:>10.1e} {verdict:<7} ({entrywise:.1e})".rjust(36))
        print(f"{name:<40}" + "".join(cells))
    print(
        "(eqtangents / Neural Tangents 0.6.5; lower is better. Differences: the "
        f"largest over all outputs, `ok` at most {args.rtol:g} of the largest entry)"
    )


if __name__ == "__main__":
    main()
