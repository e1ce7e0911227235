"""Every code snippet of the repid 1.6 user guide "Jobs, Actors and Workers" runs on this repid.

`seed_user_guide.txt` is the guide as published (its indentation was lost in extraction). Each
snippet lives, re-indented, as a file under `docs/examples/guide/`; the omitted context ("# code
above is omitted") is filled in and imports may be merged, nothing else changes. The first test
checks exactly that against the seed text; the others run each file and check what it did.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import itertools
import runpy
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from docs_helpers import GUIDE, run_until_sigint

import repid

SEED = Path(__file__).with_name("seed_user_guide.txt")

SNIPPETS: dict[str, tuple[int, int]] = {
    # example file -> the seed's lines holding the snippet (1-based, inclusive)
    "01_simple_job.py": (12, 19),
    "02_enqueue_undeclared_queue.py": (23, 27),
    "03_declare_and_enqueue.py": (29, 35),
    "04_declare_queues_on_setup.py": (40, 46),
    "05_queue_as_string_or_object.py": (57, 60),
    "06_job_priority.py": (69, 72),
    "07_job_timeout.py": (97, 101),
    "08_actor.py": (111, 115),
    "09_actor_name.py": (122, 126),
    "10_retry_policy_factory.py": (144, 155),
    "11_retry_policy_lambda.py": (158, 162),
    "12_worker_is_a_router.py": (167, 177),
    "13_worker_include_routers.py": (181, 189),
    "14_worker_run.py": (203, 211),
    "15_worker_settings.py": (224, 231),
    "16_worker_runner.py": (242, 251),
    "17_recap.py": (263, 281),
}

OMITTED = {"# code above is omitted", "# code below is omitted"}

DROPPED_IMPORTS = {
    # file -> names the snippet imports but never uses (ruff F401), left out of the file
    "12_worker_is_a_router.py": {("repid", "Job")},
}


def _normalise(line: str) -> str:
    return " ".join(line.split())


def _seed_lines(first: int, last: int) -> list[str]:
    lines = SEED.read_text(encoding="utf-8").splitlines()[first - 1 : last]
    return [
        _normalise(line)
        for line in lines
        if _normalise(line) not in OMITTED and not line.startswith(("import ", "from "))
    ]


def _imports(source: str) -> set[tuple[str, str]]:
    """(module, name) pairs imported by `source`; `import x` gives ("x", "")."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            found |= {(node.module or "", alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names}
    return found


def _file_lines(path: Path) -> list[str]:
    return [
        _normalise(line)
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and "--8<--" not in line
    ]


def run_guide(name: str, *, as_main: bool = True) -> dict[str, Any]:
    """Execute one guide file in this process; returns its module globals."""
    return runpy.run_path(str(GUIDE / name), run_name="__main__" if as_main else "guide_example")


# -- the files are the guide's snippets ----------------------------------------------------------


def test_every_snippet_has_exactly_one_file() -> None:
    assert sorted(p.name for p in GUIDE.glob("*.py")) == sorted(SNIPPETS)
    for (_, last), (first, _) in itertools.pairwise(sorted(SNIPPETS.values())):
        assert last < first, "two snippets overlap"


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_file_holds_the_snippet_unchanged(name: str) -> None:
    """The snippet's lines appear in the file, in order (only context and imports are added)."""
    expected = _seed_lines(*SNIPPETS[name])
    actual = iter(_file_lines(GUIDE / name))
    missing = [line for line in expected if not any(line == candidate for candidate in actual)]
    assert not missing, f"{name} lacks (or reorders) these lines of the guide: {missing}"


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_file_imports_what_the_snippet_imports(name: str) -> None:
    first, last = SNIPPETS[name]
    lines = SEED.read_text(encoding="utf-8").splitlines()[first - 1 : last]
    expected = _imports("\n".join(line for line in lines if line.startswith(("import ", "from "))))
    actual = _imports((GUIDE / name).read_text(encoding="utf-8"))
    assert expected - actual == DROPPED_IMPORTS.get(name, set())


# -- jobs ---------------------------------------------------------------------------------------


def test_simple_job(record: Any, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = record("Job")
    run_guide("01_simple_job.py")
    [job] = jobs.instances
    assert job.name == "my_awesome_job"
    assert job.queue == repid.Queue("default")
    assert job.priority is repid.PrioritiesT.MEDIUM
    assert not job.is_unique
    assert capsys.readouterr().out == ""


def test_enqueue_into_undeclared_queue_raises_key_error() -> None:
    with pytest.raises(KeyError) as raised:
        run_guide("02_enqueue_undeclared_queue.py")
    assert raised.value.args[0] == "default"
    assert isinstance(raised.value, repid.RepidError)


def test_declared_queue_accepts_the_job() -> None:
    namespace = run_guide("03_declare_and_enqueue.py")

    async def pending() -> list[repid.Message]:
        async with namespace["app"].magic():
            # Unsettled messages go back to the queue when the iteration ends.
            return [message async for message in repid.Queue().get_messages(stop_when_empty=True)]

    [message] = asyncio.run(pending())
    assert message.key.topic == "my_awesome_job"
    assert message.key.queue == "default"


def test_setup_declares_queues() -> None:
    namespace = run_guide("04_declare_queues_on_setup.py")
    broker = namespace["app"].connection.message_broker
    assert sorted(broker.queue_names()) == ["default", "my_awesome_queue"]


def test_queue_given_as_string_or_object(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = run_guide("05_queue_as_string_or_object.py", as_main=False)
    assert capsys.readouterr().out.splitlines() == [str(repid.Queue)] * 2
    assert namespace["my_awesome_job"].queue == repid.Queue("non-default-queue")
    assert namespace["another_job"].queue == repid.Queue("another-queue")


def test_job_priority(record: Any) -> None:
    jobs = record("Job")
    run_guide("06_job_priority.py")
    [job] = jobs.instances
    assert job.priority is repid.PrioritiesT.HIGH


def test_job_timeout(record: Any) -> None:
    jobs = record("Job")
    run_guide("07_job_timeout.py")
    assert {job.name: job.timeout for job in jobs.instances} == {
        "very_fast_job": timedelta(seconds=5),
        "very_slow_job": timedelta(hours=2),
    }


# -- actors -------------------------------------------------------------------------------------


def test_actor_decorator_returns_the_function_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = run_guide("08_actor.py", as_main=False)
    function = namespace["my_awesome_function"]
    assert inspect.iscoroutinefunction(function)
    assert function.__name__ == "my_awesome_function"
    assert not hasattr(function, "__wrapped__")
    assert list(namespace["my_router"].actors) == ["my_awesome_function"]
    asyncio.run(function())  # still callable as before
    assert capsys.readouterr().out == "Hello Repid!\n"


def test_actor_name() -> None:
    namespace = run_guide("09_actor_name.py", as_main=False)
    assert list(namespace["my_router"].actors) == ["another_name"]
    assert namespace["my_awesome_function"].__name__ == "my_awesome_function"


async def _fail_once_with_one_retry_left(router: repid.Router) -> repid.Message:
    """Run the failing actor once; return the retry it leaves in the DELAYED part of the queue."""
    app = repid.Repid(repid.Connection(repid.InMemoryMessageBroker()))
    async with app.magic(auto_disconnect=True):
        await repid.Queue().declare()
        await repid.Job("my_exceptional_function", retries=1).enqueue()
        runner = await repid.Worker(routers=[router], messages_limit=1, handle_signals=[]).run()
        assert (runner.processed, runner.failed, runner.retried) == (1, 1, 1)
        delayed = repid.Queue().get_messages(
            category=repid.MessageCategory.DELAYED, stop_when_empty=True
        )
        [retry] = [message async for message in delayed]
        return retry


@pytest.mark.parametrize(
    ("name", "first_delay"),
    [("10_retry_policy_factory.py", 60.0), ("11_retry_policy_lambda.py", 100.0)],
)
def test_retry_policy_is_used(name: str, first_delay: float) -> None:
    namespace = run_guide(name, as_main=False)
    actor = namespace["my_router"].actors["my_exceptional_function"]
    assert actor.retry_policy(1) in (first_delay, timedelta(seconds=first_delay))
    started = time.time()
    retry = asyncio.run(_fail_once_with_one_retry_left(namespace["my_router"]))
    assert retry.parameters.attempt == 2
    assert retry.parameters.not_before is not None
    assert retry.parameters.not_before - started == pytest.approx(first_delay, abs=2.0)


# -- workers ------------------------------------------------------------------------------------


def test_worker_is_a_router(record: Any, capsys: pytest.CaptureFixture[str]) -> None:
    workers = record("Worker")
    run_guide("12_worker_is_a_router.py")
    [worker] = workers.instances
    assert list(worker.actors) == ["my_func"]
    assert capsys.readouterr().out == ""


def test_worker_includes_routers(record: Any) -> None:
    workers = record("Worker")
    run_guide("13_worker_include_routers.py", as_main=False)
    assert len(workers.instances) == 2
    for worker in workers.instances:
        assert sorted(worker.actors) == ["first_actor", "second_actor"]


def test_worker_settings(record: Any) -> None:
    workers = record("Worker")
    run_guide("15_worker_settings.py", as_main=False)
    [worker] = workers.instances
    assert worker.graceful_shutdown_time == 100.0
    assert worker.messages_limit == 10_000
    assert list(worker.handle_signals) == [signal.SIGQUIT]


@pytest.mark.timeout(30)
def test_worker_runs_until_sigint_then_exits_cleanly() -> None:
    code, out, err = run_until_sigint(GUIDE / "14_worker_run.py")
    assert (code, out, err) == (0, "", "")


@pytest.mark.timeout(30)
def test_runner_reports_the_actor_runs() -> None:
    code, out, err = run_until_sigint(GUIDE / "16_worker_runner.py")
    assert (code, err) == (0, "")
    assert out == "Total actor runs: 0\n"


def test_recap(capsys: pytest.CaptureFixture[str]) -> None:
    run_guide("17_recap.py")
    assert capsys.readouterr().out == "Hello from an actor!\n"
