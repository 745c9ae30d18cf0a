"""Sessions: `nox -s tests`, `nox -s lint`, `nox -s docs`, `nox -s examples`,
`nox -s slow`, `nox -s compare`."""

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "docs"]


@nox.session
def tests(session):
    """The default test run (the README's test command)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def slow(session):
    """Exhaustive checks: the tests marked `slow`, and many more hypothesis examples."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-m",
        "slow or not slow",
        "--hypothesis-profile=thorough",
        *session.posargs,
    )


NT_REQUIREMENTS = [
    "neural-tangents==0.6.5",
    "jax==0.4.23",
    "jaxlib==0.4.23",
    "numpy<2",
    "scipy<1.13",
    "tensorflow==2.15.*",  # imported by neural_tangents.experimental
]


@nox.session
def compare(session):
    """The benchmarks with eqtangents here and Neural Tangents 0.6.5 in its own
    environment (jax 0.4.23), on this machine in one run, with ratios."""
    session.install(".")
    nt_env = Path(session.cache_dir) / "neural-tangents-0.6.5"
    nt_python = nt_env / "bin" / "python"
    if not nt_python.exists():
        session.run("python", "-m", "venv", str(nt_env))
        session.run(
            str(nt_python),
            "-m",
            "pip",
            "install",
            "-q",
            *NT_REQUIREMENTS,
            external=True,
        )
    session.run(
        "python",
        "benchmarks/compare.py",
        f"--nt-python={nt_python}",
        *session.posargs,
    )


@nox.session
def docs(session):
    """The documentation site; `--strict` turns broken references into errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def examples(session):
    """Every example in quick mode (as CI runs them); each writes its figures."""
    session.install("-e", ".[test,plot]")
    session.run("python", "examples/run_all.py", *session.posargs)


@nox.session
def lint(session):
    session.install("ruff")
    paths = [p for p in ("src", "tests", "benchmarks", "examples") if Path(p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
