"""CLI tests: the app modules in `apps/` are importable, in-process and in subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a `python -m repid.cli` subprocess that can import the app modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APPS), env.get("PYTHONPATH")]))
    env["REPID_TEST_MARKER"] = str(tmp_path / "marker.log")
    env.pop("REPID_BROKER_URL", None)
    return env
