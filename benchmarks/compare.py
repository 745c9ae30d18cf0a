"""Runs the benchmark workloads with eqtangents and with Neural Tangents 0.6.5
on this machine, one after the other, and prints a table of the ratios.

    python benchmarks/compare.py --nt-python PATH [--repeats 3]

`PATH` is the Python of an environment with `neural-tangents==0.6.5` and
`jax==0.4.23` (`nox -s compare` makes one). Each workload runs in a fresh
process per library, so peak memories are each library's own. Prints every
JSON line as it arrives, then the table: seconds (steady state, best of
`--repeats`), first-call seconds (compilation included) and peak memory, with
the ratio eqtangents / NT for each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("kernels.py", "empirical_ntk.py", "predict_mse.py")
METRICS = ("seconds", "first_call_seconds", "peak_memory_mb")


def _run(python: str, script: str, library: str, repeats: int) -> list[dict]:
    command = [python, str(HERE / script), f"--library={library}"]
    command.append(f"--repeats={repeats}")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nt-python", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--script", choices=SCRIPTS, action="append")
    args = parser.parse_args()
    ours, theirs = {}, {}
    for script in args.script or SCRIPTS:
        for row in _run(sys.executable, script, "eqtangents", args.repeats):
            ours[_key(row)] = row
        for row in _run(args.nt_python, script, "nt", args.repeats):
            theirs[_key(row)] = row
    header = f"{'workload':<34}" + "".join(f"{m:>30}" for m in METRICS)
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
        print(f"{name:<34}" + "".join(cells))
    print("(eqtangents / Neural Tangents 0.6.5; lower is better)")


if __name__ == "__main__":
    main()
