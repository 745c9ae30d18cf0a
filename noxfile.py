"""Sessions: `nox -s tests`, `nox -s lint`, `nox -s slow`, `nox -s compare`."""

import nox

nox.options.sessions = ["tests", "lint"]


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
        "pytest", "-m", "slow or not slow", "--hypothesis-profile=thorough",
        *session.posargs,
    )


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples")
