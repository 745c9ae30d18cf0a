"""Every NT 0.6.5 reference kernel, rebuilt with eqtangents, matches to 1e-6."""

import numpy as np
import pytest

from ._reference import (
    FOUNDATION_OPS,
    KERNELS,
    kernels,
    load_cases,
    missing_classes,
    ops,
)

CASES = load_cases() if KERNELS.exists() else []


def test_reference_files_are_present():
    assert KERNELS.exists(), f"NT reference kernels not found at {KERNELS}"
    assert len(CASES) == 52


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_neural_tangents(case):
    missing = missing_classes(case["spec"])
    if missing:
        beyond = sorted(ops(case["spec"]) - FOUNDATION_OPS)
        assert beyond, f"{case['id']} uses only foundation layers but lacks {missing}"
        pytest.skip(f"needs {missing} (layers beyond the foundation set: {beyond})")
    ours, ref = kernels(case)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(
            getattr(ours, name), ref[name], rtol=1e-6, atol=1e-9, err_msg=name
        )


def test_foundation_cases_all_run(capsys):
    """Counts the cases; none that uses only foundation layers may be skipped."""
    runnable = [c for c in CASES if not missing_classes(c["spec"])]
    foundation = [c for c in CASES if ops(c["spec"]) <= FOUNDATION_OPS]
    with capsys.disabled():
        print(
            f"\nreference cases: {len(CASES)} total, {len(runnable)} runnable, "
            f"{len(foundation)} use only foundation layers"
        )
    assert {c["id"] for c in foundation} <= {c["id"] for c in runnable}
