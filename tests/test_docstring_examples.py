"""Every public name's docstring has an example, and every example runs.

Examples are `pycon` blocks (`>>>` prompts and the output they print) run
with `doctest`. They assume `import eqtangents as et`, `import jax`,
`import jax.numpy as jnp`, `import numpy as np` and `import equinox as eqx`,
as the documentation says; nothing else is predefined.

The examples in `EXPENSIVE` (each compiles many functions: 4096-column
feature maps, thousands of sketches, three NTK implementations; about 2 to
8 s apiece on two cores) run in `nox -s slow`; every other example runs in
the default test run.
"""

from __future__ import annotations

import doctest
import inspect
import io
import re
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

PYCON_BLOCK = re.compile(r"^```pycon\n(.*?)^```", re.DOTALL | re.MULTILINE)
MODULES = (et, et.predict, et.features, et.plot)
EXPENSIVE = {
    "eqtangents.features.Sin",
    "eqtangents.features.LeakyRelu",
    "eqtangents.features.Abs",
    "eqtangents.predict.GradientDescentPredictor",
    "eqtangents.empirical_ntk",
    "eqtangents.ConvLocal",
    "eqtangents.Aggregate",
    "eqtangents.ConvTranspose",
    "eqtangents.empirical_kernel",
    "eqtangents.linearize",
    "eqtangents.monte_carlo_kernel",
    "eqtangents.predict.AbstractFactorization",
    "eqtangents.features.ABRelu",
    "eqtangents.features.AbstractActivationFeatures",
    "eqtangents.features.AvgPool",
    "eqtangents.features.Conv",
    "eqtangents.features.CountSketch",
    "eqtangents.features.ElementwiseNumerical",
    "eqtangents.features.Erf",
    "eqtangents.features.Gelu",
    "eqtangents.features.PolySketch",
    "eqtangents.features.Relu",
}


def _public_names() -> list:
    names = []
    for module in MODULES:
        for name in sorted(dir(module)):
            if name.startswith("_"):
                continue
            if isinstance(getattr(module, name), types.ModuleType):
                continue
            path = f"{module.__name__}.{name}"
            marks = [pytest.mark.slow] if path in EXPENSIVE else []
            names.append(pytest.param(path, marks=marks, id=path))
    return names


def _resolve(path: str):
    module_name, name = path.rsplit(".", 1)
    module = next(m for m in MODULES if m.__name__ == module_name)
    return getattr(module, name)


def test_expensive_examples_are_public_names():
    paths = {param.values[0] for param in _public_names()}
    assert EXPENSIVE <= paths, sorted(EXPENSIVE - paths)


@pytest.mark.parametrize("path", _public_names())
def test_docstring_example_runs(path):
    doc = inspect.getdoc(_resolve(path)) or ""
    blocks = PYCON_BLOCK.findall(doc)
    assert blocks, f"{path}: the docstring has no ```pycon example"
    globs = {"et": et, "jax": jax, "jnp": jnp, "np": np, "eqx": eqx}
    if path.startswith("eqtangents.plot."):
        matplotlib = pytest.importorskip("matplotlib")
        matplotlib.use("Agg")
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), globs, path, None, 0)
    assert test.examples, f"{path}: the ```pycon block has no >>> lines"
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    report = io.StringIO()
    runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
    if path.startswith("eqtangents.plot."):
        import matplotlib.pyplot as plt

        plt.close("all")
