"""The API reference lists every public name, and only public names."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

import eqtangents as et

DOCS = Path(__file__).resolve().parents[1] / "docs"
MODULES = {
    "eqtangents": (et, "api/eqtangents.md"),
    "eqtangents.predict": (et.predict, "api/predict.md"),
    "eqtangents.features": (et.features, "api/features.md"),
    "eqtangents.plot": (et.plot, "api/plot.md"),
}


def _public(module) -> set[str]:
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
    }


@pytest.mark.parametrize("path", list(MODULES))
def test_api_reference_documents_every_public_name(path):
    module, page = MODULES[path]
    text = (DOCS / page).read_text()
    documented = re.findall(rf"^::: {re.escape(path)}\.(\w+)$", text, re.MULTILINE)
    assert len(documented) == len(set(documented)), "a name is listed twice"
    assert set(documented) == _public(module), (
        f"missing from {page}: {sorted(_public(module) - set(documented))}; "
        f"not public: {sorted(set(documented) - _public(module))}"
    )


def test_every_public_name_has_a_docstring():
    for path, (module, _) in MODULES.items():
        for name in _public(module):
            doc = getattr(module, name).__doc__
            assert doc and doc.strip(), f"{path}.{name} has no docstring"
