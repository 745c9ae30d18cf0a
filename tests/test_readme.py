"""The README's example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs(capsys):
    blocks = python_blocks()
    assert blocks, "the README has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
    assert "(5, 1) (5, 5) (5, 1)" in capsys.readouterr().out


def test_readme_names_the_two_setup_commands():
    text = README.read_text()
    assert "python3 -m eqtangents" in text
    assert 'python3 -m pip install -e ".[test]" && python3 -m pytest' in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 -m pytest" in ci
