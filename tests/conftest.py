"""Suite-wide rules.

Broker tests never pass by skipping: under CI (CI=true) a skipped test of a real broker fails
the run, so a missing server is loud rather than silently "green".
"""

from __future__ import annotations

import os

import pytest

_skipped_broker_tests: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    needs_broker = item.get_closest_marker("broker") is not None or any(
        name in item.nodeid for name in ("[redis", "[rabbitmq", "[kafka", "[nats")
    )
    # A skip because the broker *declares* it lacks a capability (`require()` in the
    # conformance suite) is a documented behaviour, not a missing server.
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if report.skipped and needs_broker and "broker declares " not in reason:
        _skipped_broker_tests.append(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_broker_tests and os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"CI: {len(_skipped_broker_tests)} broker test(s) skipped; a broker server is "
                "missing, which fails the run:",
                red=True,
            )
            for nodeid in _skipped_broker_tests[:20]:
                reporter.write_line(f"  {nodeid}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
