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
the kernels behind them), and a second table says how far apart they are: the
largest `|a - b|` over all entries of all outputs, relative to the largest
`|b|` of the same array (agreement to `rtol` at the kernel's scale), between
eqtangents and NT in float32, and against NT run once more in float64 as the
reference. Where NT's own float32 result is further than `--rtol` from its
float64 one, the float64 comparison is the meaningful one. (Entrywise relative
differences are no test for entries that are sums with cancellation, like the
near-zero off-diagonal output pairs of an empirical NTK.)
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


def _run(python, script, library, repeats, save_dir, extra=()) -> list[dict]:
    command = [python, str(HERE / script), f"--library={library}", *extra]
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


def _difference(ours_path: Path, theirs_path: Path) -> float | None:
    """The largest `|ours - theirs|` over all entries of all saved outputs,
    each relative to the largest `|theirs|` of its array (None if missing)."""
    if not (ours_path.exists() and theirs_path.exists()):
        return None
    ours, theirs = np.load(ours_path), np.load(theirs_path)
    largest = 0.0
    for name in theirs.files:
        a, b = ours[name].astype(np.float64), theirs[name].astype(np.float64)
        if a.shape != b.shape:
            raise ValueError(
                f"{theirs_path.name}: {name} is {a.shape} against {b.shape}"
            )
        largest = max(largest, np.abs(a - b).max() / np.abs(b).max())
    return largest


def _timing_table(ours: dict, theirs: dict) -> None:
    header = f"{'workload':<40}" + "".join(f"{m:>30}" for m in METRICS)
    print("\n" + header + "\n" + "-" * len(header))
    for key, row in ours.items():
        other = theirs.get(key, {})
        cells = []
        for metric in METRICS:
            a, b = row.get(metric), other.get(metric)
            if a is None or b is None:
                cells.append(f"{'n/a':>30}")
            else:
                cells.append(f"{a:>9.3f} / {b:>9.3f} = {a / b:>6.2f}")
        print(f"{_name(key):<40}" + "".join(cells))
    print("(eqtangents / Neural Tangents 0.6.5; lower is better)")


def _agreement_table(save_dir: Path, rtol: float) -> None:
    columns = ("ours32 - NT32", "ours32 - NT64", "NT32 - NT64", "")
    header = f"{'outputs':<40}" + "".join(f"{c:>16}" for c in columns)
    print("\n" + header + "\n" + "-" * len(header))
    for ours in sorted(save_dir.glob("*-eqtangents.npz")):
        stem = ours.name.removesuffix("-eqtangents.npz")
        nt32, nt64 = save_dir / f"{stem}-nt.npz", save_dir / "x64" / f"{stem}-nt.npz"
        pairs = ((ours, nt32), (ours, nt64), (nt32, nt64))
        gaps = [_difference(a, b) for a, b in pairs]
        cells = [f"{'n/a':>16}" if g is None else f"{g:>16.1e}" for g in gaps]
        if gaps[0] is not None and gaps[0] <= rtol:
            verdict = "equal to NT"
        elif gaps[1] is not None and gaps[1] <= rtol:
            verdict = "equal to NT's float64"
        elif None not in gaps[1:] and gaps[1] <= gaps[2]:
            verdict = "closer to NT's float64 than NT"
        else:
            verdict = "DIFFERS"
        print(f"{stem.replace('-', '/'):<40}" + "".join(cells) + f"  {verdict}")
    print(
        "(largest |a - b| over all outputs, relative to the largest |b| of each; "
        f"equal: at most {rtol:g}. 32/64: float32/float64)"
    )


def _name(key: tuple) -> str:
    return "/".join(part for part in key if part)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nt-python", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--script", choices=SCRIPTS, action="append")
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args()
    ours, theirs = {}, {}
    save_dir = Path(tempfile.mkdtemp(prefix="eqtangents-compare-"))
    (save_dir / "x64").mkdir()
    for script in args.script or SCRIPTS:
        for row in _run(sys.executable, script, "eqtangents", args.repeats, save_dir):
            ours[_key(row)] = row
        for row in _run(args.nt_python, script, "nt", args.repeats, save_dir):
            theirs[_key(row)] = row
        _run(args.nt_python, script, "nt", 0, save_dir / "x64", ["--x64"])
    _timing_table(ours, theirs)
    _agreement_table(save_dir, args.rtol)


if __name__ == "__main__":
    main()
