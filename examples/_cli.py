"""What every example shares: `--quick` and `--out`, and saving figures."""

from __future__ import annotations

import argparse
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "figures"


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a smaller problem, for CI (< 1 min)"
    )
    parser.add_argument(
        "--out", type=Path, default=FIGURES, help=f"where figures go ({FIGURES})"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def save(fig, args: argparse.Namespace, name: str) -> None:
    """Writes `fig` to `OUT/NAME.png` and says where."""
    path = args.out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
