"""Runs every example in quick mode and checks that each wrote its figures.

    python examples/run_all.py [--out DIR]

CI runs this; each example takes under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = {
    "cookbook": ["cookbook_kernels", "cookbook_uncertainty"],
    "infinite_vs_finite": ["infinite_vs_finite"],
    "linearization": ["linearization"],
    "phase_diagram": ["phase_diagram"],
    "any_activation": ["any_activation"],
    "empirical_resnet": ["empirical_resnet"],
    "sketching": ["sketching"],
    "many_devices": ["many_devices"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="eqtangents-examples-"))
    failed = []
    for name, figures in FIGURES.items():
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(HERE / f"{name}.py"), "--quick", f"--out={out}"],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        missing = [f for f in figures if not (out / f"{f}.png").is_file()]
        ok = done.returncode == 0 and not missing
        print(f"{'ok  ' if ok else 'FAIL'} {name:20s} {seconds:6.1f} s", flush=True)
        if not ok:
            failed.append(name)
            print(done.stdout[-2000:], done.stderr[-4000:], sep="\n")
            if missing:
                print(f"missing figures: {missing}")
    print(f"figures in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
