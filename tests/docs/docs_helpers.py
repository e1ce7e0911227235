"""Shared helpers of the documentation tests: where the examples are and how to run them."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS_EXAMPLES = ROOT / "docs" / "examples"
GUIDE = DOCS_EXAMPLES / "guide"
SIGINT_WHEN_READY = Path(__file__).with_name("sigint_when_ready.py")
READY_MARKER = "repid-docs-test: SIGINT handler installed"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_script(path: Path, *, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run `python path` in a fresh interpreter and return what it did."""
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=subprocess_env(),
        check=False,
    )


def run_until_sigint(path: Path, *, start_deadline: float = 10.0) -> tuple[int, str, str]:
    """Start a script that runs until signalled; SIGINT it once its worker handles SIGINT.

    Returns (exit code, stdout, stderr). Fails if the worker is not up within `start_deadline`
    seconds or does not exit within 10 seconds of the signal.
    """
    process = subprocess.Popen(
        [sys.executable, str(SIGINT_WHEN_READY), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=subprocess_env(),
    )
    assert process.stdout is not None
    first_line: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: first_line.put(process.stdout.readline()))
    reader.start()
    try:
        try:
            line = first_line.get(timeout=start_deadline)
        except queue.Empty:
            raise AssertionError(
                f"{path.name}: worker not running after {start_deadline}s"
            ) from None
        if line.strip() != READY_MARKER:
            process.wait(timeout=5)
            raise AssertionError(f"{path.name} did not start: {line!r} {process.stderr.read()!r}")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        reader.join()
    return process.returncode, out, err
