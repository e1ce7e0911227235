"""Under CI, a skipped broker test fails the run (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"

SKIPPING_TEST = """
import pytest

@pytest.mark.broker("redis")
def test_needs_redis():
    pytest.skip("redis is not running")

def test_plain():
    pass
"""


@pytest.mark.parametrize(("ci", "expected"), [("true", 1), ("", 0)])
def test_skipped_broker_test_fails_only_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, expected: int
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(SUITE_CONFTEST.read_text())
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    broker(name): needs a broker\n"
    )
    pytester.makepyfile(SKIPPING_TEST)
    result = pytester.runpytest("-p", "no:repid", "-p", "no:hypothesispytest")
    assert result.ret == expected
    result.assert_outcomes(passed=1, skipped=1)
