"""nox sessions: `nox -s tests lint typecheck docs bench` (CI runs scripts/test.sh instead)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("bash", "scripts/services.sh", external=True)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("python", "benchmarks/run.py", *(session.posargs or ["inmemory"]))
