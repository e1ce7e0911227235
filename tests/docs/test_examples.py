"""Every example of the documentation (and the README demo) runs, and prints what the docs say.

Top-level `docs/examples/*.py` files are programs with a main guard: each runs in a fresh
interpreter and must exit 0 with the output listed in `EXPECTED` (one regular expression per
line, matched in full). `docs/examples/testing/` is a pytest suite using the repid plugin; it runs
under pytest. `docs/examples/guide/` is covered by `test_user_guide.py`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docs_helpers import DOCS_EXAMPLES, GUIDE, ROOT, run_script, subprocess_env

DOCS = ROOT / "docs"
DEMO = ROOT / "examples" / "demo.py"
SQLITE_DEMO = ROOT / "examples" / "demo_sqlite.py"
TESTING_EXAMPLES = DOCS_EXAMPLES / "testing"

EXPECTED: dict[str, list[str]] = {
    "actor_handles.py": [
        r"actor 'process_order': unexpected keyword argument 'orderid' "
        r"\(did you mean 'order_id'\?\)",
        r"sent to 'orders'",
        r"processing order 3",  # HIGH first
        r"processing order 1",
        r"processing order 2 gift",
    ],
    "quickstart.py": [
        r"Sending a welcome email to user 1 \(en\)",
        r"Sending a welcome email to user 2 \(fr\)",
        r"Processed 2 jobs",
    ],
    "getting_started.py": [
        r"processed=2 succeeded=2",
        r"price_order: success=True value=24\.0 data=24\.0",
        r"  finished \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00, took \d+:\d\d:\d\d(\.\d+)?",
        r"build_report: success=True value='report-7\.pdf' data=\"report-7\.pdf\"",
        r"  finished \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00, took \d+:\d\d:\d\d(\.\d+)?",
    ],
    "brokers_in_memory.py": [
        r"\{'ready': 4, 'delayed': 1, 'in_flight': 0, 'dead': 0\}",
        r"ran high after \d+\.\ds",
        r"ran medium after \d+\.\ds",
        r"ran unique after \d+\.\ds",
        r"ran low after \d+\.\ds",
        r"ran deferred after (0\.[5-9]|[1-9]\d*\.\d)s",  # never before its time
    ],
    "brokers_sqlite.py": [
        r"\{'ready': 4, 'delayed': 0, 'in_flight': 0, 'dead': 0\}",
        r"ran high in the worker process",
        r"ran medium in the worker process",
        r"ran low in the worker process",
        r"add: 42 \(read back by the producer\)",
    ],
    "brokers_rabbitmq.py": [
        r"ran high after \d+\.\ds",
        r"ran low after \d+\.\ds",
        r"ran deferred after (0\.[5-9]|[1-9]\d*\.\d)s",  # never before its time
        r"dead letter: charge exception ValueError",
        r"add: 42",
    ],
    "brokers_kafka.py": [
        r"\{'ready': 3, 'delayed': 1, 'in_flight': 0, 'dead': 0\}",
        r"ran high after \d+\.\ds",
        r"ran low after \d+\.\ds",
        r"ran deferred after (0\.[5-9]|[1-9]\d*\.\d)s",  # never before its time
        r"dead letter: charge exception ValueError",
        r"add: 42",
    ],
    "brokers_postgres.py": [
        r"order 2: payment failed",
        r"\{'ready': 4, 'delayed': 1, 'in_flight': 0, 'dead': 0\}",
        r"ran high after \d+\.\ds",
        r"shipping order 1",  # order 2 was rolled back with its job: it never ships
        r"ran low after \d+\.\ds",
        r"ran deferred after (0\.[5-9]|[1-9]\d*\.\d)s",  # never before its time
        r"dead letter: charge exception ValueError",
        r"add: 42",
    ],
    "brokers_nats.py": [
        r"\{'ready': 3, 'delayed': 1, 'in_flight': 0, 'dead': 0\}",
        r"ran high after \d+\.\ds",
        r"ran low after \d+\.\ds",
        r"ran deferred after (0\.[5-9]|[1-9]\d*\.\d)s",  # never before its time
        r"dead letter: charge exception ValueError",
        r"add: 42",
    ],
    "brokers_shared_state.py": [
        r"shared_state: True",
        r"cancelled from another process: dequeued doomed",
        r"ran nightly",
        r"ran kept",
        r"live workers seen by another process: \[\('docs_state_[0-9a-f]{8}',\)\]",
    ],
    "brokers_redis.py": [
        r"\{'ready': 3, 'delayed': 1, 'in_flight': 0, 'dead': 0\}",
        r"ran high after \d+\.\ds",
        r"ran low after \d+\.\ds",
        r"ran deferred after (0\.[5-9]|[1-9]\d*\.\d)s",  # never before its time
        r"dead letter: charge exception ValueError",
        r"add: 42",
    ],
    "reliability_outcomes.py": [
        r"attempts=6 retried=3",
        r'succeed: success=True "done"',
        r'fail_once: success=True "done on attempt 2"',
        r"always_fail: success=False ValueError",
        r"dead letter: always_fail exception ValueError x3",
        r"back in the queue: slow, attempt 1",
        r"returned on shutdown: 1",
    ],
    "reliability_bad_input.py": [
        r"refused: job argument 'a' of type object cannot be serialised to JSON",
        r"refused: message of \d+ bytes exceeds the broker's limit of 65536 bytes",
        r"processed=6 dead_lettered=6",
        r"decode_error +actor=\? +error=None",
        r" +raw bytes kept: b'\\x00 not a repid message'",
        r"unknown_actor +actor=nobody_home +error=None",
        r"validation_error +actor=add +error=\w+",
        r"exception +actor=divide +error=ZeroDivisionError",
        # both wait about a second; which one is dead-lettered first is not fixed
        r"(expired +actor=add +error=None|timeout +actor=dawdle +error=TimeoutError)",
        r"(expired +actor=add +error=None|timeout +actor=dawdle +error=TimeoutError)",
    ],
    "actor_defaults.py": [
        r"first: alert",
        r"late alert after alert: True",
        r"sync_account runs: 3",
        r"dead letter: sync_account after 3 attempts",
    ],
    "workflow_diamond.py": [
        r"succeeded - 76800 pixels, thumbnail 64 wide, approved by ops",
        r"workflow wf_\.\.\. \(thumbnail\): succeeded",
        r"fetch succeeded",
        r"resize succeeded",
        r"thumbnail succeeded",
        r"approval succeeded",
        r"notify succeeded",
        r"chord: succeeded \['succeeded', 'succeeded', 'succeeded', 'succeeded'\]",
    ],
    "dead_letter_retention.py": [
        r"dead letter order-1 deleted by the sweep",
        r"expire_dead_letters removed 1",
    ],
    "records.py": [
        r"before: queued",
        r"add: succeeded after 1 attempt\(s\)",
        r"flaky: dead after 2 attempt\(s\)",
        r"  attempt 1: ConnectionError: upstream 1 is down",
        r"  attempt 2: ConnectionError: upstream 1 is down",
    ],
    "worker_lifespan.py": [
        r"opening the pool",
        r"hello user-7",
        r"closing the pool, after the last actor",
    ],
    "worker_control.py": [
        r"actors found: 1",
        r"running: in flight \{'resize': 1\}",
        r"stopping, is_running=True",
        r"idle: processed=1 succeeded=1",
    ],
    "typed_outputs.py": [
        r"invoice: Invoice\(order=7, total=19\.5\)",
        r"dead letter: bill_badly output_validation_error",
    ],
    "event_stream.py": [
        r"started add attempt=1 by [^:]+:\d+:\w+",
        r"succeeded add attempt=1 by [^:]+:\d+:\w+",
        r"  in \d+\.\d{3}s",
    ],
    "lifecycle.py": [
        r"add: 5",
        r"event: enqueued charge attempt=1",
        r"event: started charge attempt=1",
        r"event: failed charge attempt=1 ValueError",
        r"event: dead_lettered charge attempt=1 ValueError",
        r"charge failed: ValueError: card declined for order 7",
        r"cancel running: requested",
        r"long_report was cancelled",
        r"cancel queued: dequeued",
        r"fetch_rates: rates fetched",
        r"calls: 2",
        r"partner api: \[0, 1, 2, 3, 4\]",
        r"cancelled=1 snoozed=1",
    ],
    "observability_logging.py": [
        r'\{"level": "INFO", "logger": "repid\.jobs", '
        r'"message": "succeeded add sum-1 \(attempt 1\) in \d+\.\d+ ms", '
        r'"event": "succeeded", "job_id": "sum-1", "actor": "add", "queue": "default", '
        r'"attempt": 1, "duration_ms": \d+\.\d+, "outcome": "succeeded", '
        r'"error_type": null, "error_message": null\}',
        r'\{"level": "ERROR", "logger": "repid\.jobs", '
        r'"message": "dead_lettered charge order-7 \(attempt 1\) in \d+\.\d+ ms: '
        r'ValueError: card declined for order 7", '
        r'"event": "dead_lettered", "job_id": "order-7", "actor": "charge", "queue": "default", '
        r'"attempt": 1, "duration_ms": \d+\.\d+, "outcome": "dead_lettered", '
        r'"error_type": "ValueError", "error_message": "card declined for order 7"\}',
    ],
    "observability_metrics.py": [
        r'repid_jobs_succeeded_total\{actor="add"\} 2',
        r'repid_jobs_dead_lettered_total\{actor="charge",reason="exception"\} 1',
        r'repid_actor_duration_seconds_count\{actor="add",outcome="succeeded"\} 2',
        r'repid_queue_depth\{state="dead"\} 1',
    ],
    "observability_tracing.py": [
        r"checkout: root",
        r"send default: parent is checkout",
        r"process default: parent is send default",
        r"render pdf: parent is process default",
        r"one trace: True",
    ],
    "migrating_requeue_dead_letters.py": [
        r'requeueing \{"order_id":1\}: payment service is down',
        r'requeueing \{"order_id":2\}: payment service is down',
        r"charged order 1",
        r"charged order 2",
        r"second run: succeeded=2",
    ],
    "fastapi_app.py": [
        r"POST /add -> 200 \{'sum': 5\}",
        r"GET /repid/ -> 200, queue 'default' shown: True",
        r"disconnected after shutdown: True",
    ],
}


def _has_main_guard(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


def _assert_output(out: str, patterns: list[str]) -> None:
    lines = out.splitlines()
    assert len(lines) == len(patterns), f"expected {len(patterns)} lines, got:\n{out}"
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}\n{out}"


PROGRAMS = sorted(p.name for p in DOCS_EXAMPLES.glob("*.py"))


def test_every_program_has_a_main_guard_and_expected_output() -> None:
    assert PROGRAMS, "no examples found"
    assert sorted(EXPECTED) == PROGRAMS
    for name in PROGRAMS:
        assert _has_main_guard(DOCS_EXAMPLES / name), f"{name} has no main guard"
    assert len(set(EXPECTED["reliability_bad_input.py"][-2:])) == 1


def test_every_example_file_is_run_by_a_test() -> None:
    """Each .py file under docs/examples is a program, a guide snippet or a pytest example."""
    covered = {DOCS_EXAMPLES / name for name in PROGRAMS}
    covered |= set(GUIDE.glob("*.py")) | set(TESTING_EXAMPLES.glob("*.py"))
    assert set(DOCS_EXAMPLES.rglob("*.py")) == covered


def test_docs_hold_no_inline_python() -> None:
    """Python in the pages comes from example files (`--8<--` includes), never typed inline."""
    fence = re.compile(
        r"^```\s*(?:python|py|\{[^}\n]*\.(?:python|py)\b[^}\n]*\})[^\n]*\n(.*?)^```",
        re.MULTILINE | re.DOTALL,
    )
    pages = list(DOCS.rglob("*.md"))
    assert pages, "no pages found"
    includes = 0
    for page in pages:
        for block in fence.findall(page.read_text(encoding="utf-8")):
            includes += 1
            code = [line for line in block.splitlines() if line.strip()]
            assert code, f"empty python block in {page.name}"
            assert all(line.strip().startswith("--8<--") for line in code), (
                f"inline python in {page.relative_to(ROOT)}: put it in docs/examples/\n{block}"
            )
    assert includes >= len(PROGRAMS), "the fence pattern no longer matches the pages' code blocks"


def test_every_example_file_is_shown_in_the_docs() -> None:
    include = re.compile(r'--8<--\s+"([^":]+)(?::[\w-]+)?"')
    shown = {
        DOCS_EXAMPLES / path
        for page in DOCS.rglob("*.md")
        for path in include.findall(page.read_text(encoding="utf-8"))
    }
    assert set(DOCS_EXAMPLES.rglob("*.py")) == shown


def test_outputs_shown_in_the_docs_are_what_the_examples_print() -> None:
    """A page's "$ python example.py" block matches what the test below expects of it."""
    session = re.compile(r"^```text\n\$ python (\S+\.py)\n(.*?)^```", re.MULTILINE | re.DOTALL)
    shown = 0
    for page in DOCS.rglob("*.md"):
        for name, output in session.findall(page.read_text(encoding="utf-8")):
            shown += 1
            _assert_output(output, EXPECTED[name])
    assert shown >= 5


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    """`mkdocs build --strict` fails on a missing example file or section marker."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**subprocess_env(), "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "index.html").exists()


@pytest.fixture(scope="module")
def launched() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Start every example program and the pytest run of the testing examples at once.

    They mostly wait (on timeouts, sleeps, interpreter start-up), so running them side by side
    keeps this module fast; each test then collects its own process.
    """
    commands = {name: [sys.executable, str(DOCS_EXAMPLES / name)] for name in PROGRAMS}
    commands["pytest"] = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(TESTING_EXAMPLES),
    ]
    processes = {
        name: subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=subprocess_env(),
        )
        for name, command in commands.items()
    }
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


def _finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_runs(name: str, launched: dict[str, subprocess.Popen[str]]) -> None:
    code, out, err = _finish(launched[name], timeout=30)
    assert code == 0, err
    assert err == ""
    _assert_output(out, EXPECTED[name])


def test_testing_examples_pass_under_pytest(launched: dict[str, subprocess.Popen[str]]) -> None:
    code, out, err = _finish(launched["pytest"], timeout=60)
    assert code == 0, out + err
    source = (TESTING_EXAMPLES / "test_shop.py").read_text(encoding="utf-8")
    tests = len(re.findall(r"^async def test_", source, re.MULTILINE))
    assert re.search(rf"\b{tests} passed\b", out), out


def test_readme_demo() -> None:
    began = time.monotonic()
    done = run_script(DEMO, timeout=10)
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert elapsed < 3.0
    _assert_output(
        done.stdout,
        [
            r"producer \| enqueued greet\(name='Ada'\) with priority MEDIUM",
            r"producer \| enqueued greet\(name='Grace'\) with priority LOW",
            r"producer \| enqueued flaky_upload\(file='report\.pdf'\) with priority MEDIUM",
            r"producer \| enqueued greet\(name='Linus'\) with priority MEDIUM",
            r"producer \| enqueued greet\(name='VIP'\) with priority HIGH",
            r"worker +\| started: .*",
            r"worker +\| greet\(name='VIP'\)",
            r"worker +\| greet\(name='Ada'\)",
            r"worker +\| flaky_upload\(file='report\.pdf'\), attempt 1: .*",
            r"worker +\| greet\(name='Linus'\)",
            r"worker +\| flaky_upload\(file='report\.pdf'\), attempt 2: uploaded",
            r"worker +\| greet\(name='Grace'\)",
            r"worker +\| stopped: processed=6 succeeded=5 failed=1 retried=1 dead_lettered=0",
            r"results +\| greet\(name='VIP'\) returned \"Hello, VIP!\" \(success=True, .*\)",
        ],
    )


def test_readme_sqlite_demo() -> None:
    done = run_script(SQLITE_DEMO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    _assert_output(
        done.stdout,
        [
            r"producer  \| enqueued 6 jobs into repid\.db and exited",
            *(rf"worker 1  \| resize\(photo={n}\) in process \d+" for n in (1, 2, 3)),
            r"worker 1  \| stopped after 3 jobs",
            *(rf"worker 2  \| resize\(photo={n}\) in process \d+" for n in (4, 5, 6)),
            r"worker 2  \| stopped after 3 jobs",
            r"main      \| queue now: \{'ready': 0, 'delayed': 0, 'in_flight': 0, 'dead': 0\}",
            r'main      \| result of photo 6, stored by worker 2: "photo-6-small\.jpg"',
        ],
    )
    pids = set(re.findall(r"in process (\d+)", done.stdout))
    assert len(pids) == 2, "the two workers were not two processes"
