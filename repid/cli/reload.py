"""`repid run --reload`: development mode, the worker restarted when a Python file changes.

The worker runs as a child process (`repid run ... --supervised`); watchfiles watches the current
directory and each change stops the child gracefully (SIGTERM) and starts a fresh one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from repid.cli.supervisor import SUPERVISOR_PID_ENV
from repid.cli.target import CLIError

__all__ = ["run_reloading"]

logger = logging.getLogger("repid.cli.reload")

_STOP_TIMEOUT = 10.0
"""Seconds a child gets to stop on a reload before it is killed."""


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run_reloading(
    command: Sequence[str], *, env: Mapping[str, str], root: Path | None = None
) -> int:
    """Run `command`, restarting it on every change of a `.py` file under `root` (the cwd).

    Returns when SIGINT/SIGTERM arrives (the child is stopped first); the exit status is 0.
    """
    try:
        from watchfiles import PythonFilter, watch
    except ImportError:
        raise CLIError("--reload needs watchfiles: pip install 'repid[reload]'") from None
    root = Path.cwd() if root is None else root
    stop = threading.Event()

    def _handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    child_env = {**os.environ, **env, SUPERVISOR_PID_ENV: str(os.getpid())}

    def start() -> subprocess.Popen[bytes]:
        child = subprocess.Popen(list(command), env=child_env)
        logger.info("reload: worker started (pid %d), watching %s", child.pid, root)
        return child

    child = start()
    try:
        for changes in watch(
            root, watch_filter=PythonFilter(), stop_event=stop, yield_on_timeout=True
        ):
            if stop.is_set():
                break
            if not changes:
                continue
            names = sorted({Path(path).name for _, path in changes})
            logger.info("reload: %s changed; restarting the worker", ", ".join(names))
            _stop(child)
            child = start()
    finally:
        _stop(child)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
