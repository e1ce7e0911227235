"""`repid run` with several modules, or a package to scan: one worker for all their actors.

Each test builds a uniquely named package in `tmp_path` whose actors append `<actor> <n>` to a
marker file; jobs wait in a SQLite broker file, and `--burst` drains them and exits.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from repid import Connection, Job, Queue
from repid.brokers.sqlite import SqliteMessageBroker
from repid.cli import main

ACTOR = """
from repid import Router

router = Router()


@router.actor(name={name!r}, queue={queue!r})
async def {name}(n: int) -> None:
    with open({marker!r}, "a", encoding="utf-8") as marker:
        marker.write(f"{name} {{n}}\\n")
"""

SQLITE_APP = """
from repid import Connection, Repid
from repid.brokers.sqlite import SqliteMessageBroker

app = Repid(Connection(SqliteMessageBroker({url!r})))
"""

MEMORY_APP = """
from repid import Connection, InMemoryMessageBroker, Repid

app = Repid(Connection(InMemoryMessageBroker()))
"""


class Package:
    """A package `scan_<random>` in `tmp_path`, importable and the current directory's."""

    def __init__(self, tmp_path: Path) -> None:
        self.name = f"scan_{uuid4().hex[:10]}"
        self.root = tmp_path / self.name
        self.marker = tmp_path / "marker.log"
        self.url = f"sqlite:///{tmp_path / 'queues.db'}"
        self.write("__init__.py", "")

    def write(self, path: str, source: str) -> None:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        if not (file.parent / "__init__.py").exists():
            (file.parent / "__init__.py").write_text("")
        file.write_text(source)

    def actor(self, path: str, name: str, queue: str = "default", extra: str = "") -> None:
        self.write(path, ACTOR.format(name=name, queue=queue, marker=str(self.marker)) + extra)

    def enqueue(self, *jobs: tuple[str, str, int]) -> None:
        """(actor, queue, n) jobs, in the SQLite file."""

        async def send() -> None:
            connection = Connection(SqliteMessageBroker(self.url))
            await connection.connect()
            try:
                for actor, queue, n in jobs:
                    await Queue(queue, _connection=connection).declare()
                    await Job(actor, queue=queue, args={"n": n}, _connection=connection).enqueue()
            finally:
                await connection.disconnect()

        asyncio.run(send())

    def ran(self) -> list[str]:
        return sorted(self.marker.read_text().splitlines()) if self.marker.exists() else []


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Package:
    monkeypatch.syspath_prepend(str(tmp_path))  # restores sys.path afterwards
    monkeypatch.chdir(tmp_path)
    return Package(tmp_path)


def run(*args: str) -> int:
    return main(["--log-level", "WARNING", "run", *args, "--burst", "--concurrency", "2"])


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("repid:")]
    assert len(lines) == 1, lines
    return lines[0]


# -- several modules ------------------------------------------------------------------------


def test_several_modules_run_in_one_worker(package: Package) -> None:
    package.actor("jobs.py", "send", queue="mail")
    package.actor("billing.py", "charge", queue="billing")
    package.enqueue(("send", "mail", 1), ("charge", "billing", 2))
    p = package.name
    assert run(f"{p}.jobs", f"{p}.billing:router", "--broker", package.url) == 0
    assert package.ran() == ["charge 2", "send 1"]


def test_the_one_module_that_defines_an_app_gives_the_connection_of_all(
    package: Package,
) -> None:
    package.actor("jobs.py", "send", extra=SQLITE_APP.format(url=package.url))
    package.actor("billing.py", "charge")
    package.enqueue(("send", "default", 1), ("charge", "default", 2))
    assert run(f"{package.name}.jobs", f"{package.name}.billing") == 0  # no --broker
    assert package.ran() == ["charge 2", "send 1"]


def test_two_modules_with_different_apps_are_an_error_naming_both(
    package: Package, capsys: pytest.CaptureFixture[str]
) -> None:
    package.actor("jobs.py", "send", extra=MEMORY_APP)
    package.actor("billing.py", "charge", extra=MEMORY_APP)
    jobs, billing = f"{package.name}.jobs", f"{package.name}.billing"
    assert run(jobs, billing) == 1
    line = error_line(capsys)
    assert f"{jobs!r} and {billing!r} define different connections" in line
    assert "--app MODULE:APP or --broker URL" in line
    package.enqueue(("send", "default", 1))
    assert run(jobs, billing, "--broker", package.url) == 0  # an explicit connection decides
    assert package.ran() == ["send 1"]


def test_several_worker_targets_are_an_error(
    package: Package, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = "\nfrom repid import Worker\nworker = Worker([router], tasks_limit=3)\n"
    package.actor("jobs.py", "send", extra=worker)
    package.actor("billing.py", "charge", extra=worker)
    assert run(f"{package.name}.jobs", f"{package.name}.billing", "--broker", package.url) == 1
    assert "several Worker targets" in error_line(capsys)


# -- package scan ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["--scan", "name", "directory"])
def test_a_package_scan_runs_the_routers_of_every_module(package: Package, form: str) -> None:
    package.actor("jobs.py", "send")
    # The same router imported by another module is one router, not a clash.
    reexport = f"\nfrom {package.name}.jobs import router as jobs_router  # noqa\n"
    package.actor("billing.py", "charge", extra=reexport)
    package.actor("reports/monthly.py", "report", queue="reports")
    package.write("__main__.py", "raise SystemExit('a __main__ module must not be imported')\n")
    package.enqueue(("send", "default", 1), ("charge", "default", 2), ("report", "reports", 3))
    given = {"--scan": ["--scan", package.name], "name": [package.name]}
    args = given.get(form, [f"{package.name}/"])
    assert run(*args, "--broker", package.url) == 0
    assert package.ran() == ["charge 2", "report 3", "send 1"]


def test_a_package_whose_init_defines_the_app_is_scanned_with_it(package: Package) -> None:
    package.write("__init__.py", SQLITE_APP.format(url=package.url))
    package.actor("jobs.py", "send")
    package.actor("billing.py", "charge")
    package.enqueue(("send", "default", 1), ("charge", "default", 2))
    assert run(package.name) == 0  # before: "is a Repid app but ... defines no Router"
    assert package.ran() == ["charge 2", "send 1"]


def test_scan_beside_a_target_and_app_option(package: Package) -> None:
    package.write("settings.py", SQLITE_APP.format(url=package.url))
    package.actor("jobs.py", "send", queue="mail")  # not consumed by the first run
    package.actor("plugins/extra.py", "extra")
    package.enqueue(("send", "mail", 1), ("extra", "default", 2))
    p = package.name
    assert run("--scan", f"{p}.plugins", "-A", f"{p}.settings:app") == 0
    assert package.ran() == ["extra 2"]  # -A with --scan alone: the connection, not a target
    assert run(f"{p}.jobs", "--scan", f"{p}.plugins", "-A", f"{p}.settings:app") == 0
    assert package.ran() == ["extra 2", "send 1"]


@pytest.mark.parametrize("processes", [[], ["--processes", "2"]])
def test_one_actor_name_with_two_functions_is_an_error_naming_both_modules(
    package: Package, capsys: pytest.CaptureFixture[str], processes: list[str]
) -> None:
    package.actor("billing.py", "charge")
    package.actor("payments.py", "charge")
    assert run("--scan", package.name, "--broker", package.url, *processes) == 1
    line = error_line(capsys)
    billing, payments = f"{package.name}.billing", f"{package.name}.payments"
    assert "actor 'charge' is registered twice with different functions" in line
    assert f"in {billing!r} ({billing}.charge) and in {payments!r} ({payments}.charge)" in line


@pytest.mark.parametrize("form", ["--scan", "name"])
def test_a_module_that_fails_to_import_is_named_with_its_error(
    package: Package, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    package.actor("jobs.py", "send")
    package.write("broken.py", "raise RuntimeError('boom at import')\n")
    args = ["--scan", package.name] if form == "--scan" else [package.name]
    assert run(*args, "--broker", package.url) == 1
    line = error_line(capsys)
    assert f"importing '{package.name}.broken' failed: RuntimeError: boom at import" in line
    assert package.ran() == []


def test_a_package_without_routers_says_so(
    package: Package, capsys: pytest.CaptureFixture[str]
) -> None:
    package.write("helpers.py", "X = 1\n")
    assert run("--scan", package.name, "--broker", package.url) == 1
    assert f"no actors found in {package.name!r}" in error_line(capsys)


def test_scanned_worker_processes_get_the_targets(
    package: Package, cli_env: dict[str, str], tmp_path: Path
) -> None:
    package.actor("jobs.py", "send")
    package.actor("billing/invoices.py", "charge", queue="billing")
    package.enqueue(*[("send", "default", n) for n in range(3)], ("charge", "billing", 9))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "repid.cli", "run", f"{package.name}/", "--processes", "2"),
            *("--burst", "--concurrency", "2", "--broker", package.url),
        ],
        env=cli_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert package.ran() == ["charge 9", "send 0", "send 1", "send 2"]  # each job once


def test_help_describes_several_targets_and_scan(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--scan PACKAGE" in out
    assert "give several to run them together" in out


def test_run_without_a_target_names_scan_as_an_alternative(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as leave:
        main(["run"])
    assert leave.value.code == 2
    assert "(or TARGET, or --scan PACKAGE)" in capsys.readouterr().err
