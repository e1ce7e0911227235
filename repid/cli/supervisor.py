"""`repid run --processes N`: keep N worker processes alive.

Each child is `python -m repid.cli run ... --supervised`; secrets (broker URLs) reach it through
its environment, never its command line, which every local user can read. A child that crashes is
restarted (with backoff if it keeps crashing), one that exits 0 after `--max-jobs-per-child` is
replaced by a fresh one, and SIGTERM/SIGINT are forwarded so every child shuts down gracefully.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

__all__ = ["Supervisor"]

logger = logging.getLogger("repid.cli.supervisor")

_POLL_INTERVAL = 0.05
"""How often children are checked for exit (a signal wakes the loop at once)."""
_KILL_MARGIN = 5.0
"""Seconds beyond the graceful shutdown time before children still running are killed."""
_HEALTHY_AFTER = 5.0
"""A child that lived this long before crashing is restarted at once, not backed off."""
_MAX_BACKOFF = 10.0

SUPERVISOR_PID_ENV = "REPID_SUPERVISOR_PID"
"""Set in each child: the child stops if its supervisor dies (no orphaned workers)."""
WORKER_INDEX_ENV = "REPID_WORKER_INDEX"
"""Set in each child: its slot, 0..N-1 (stable across restarts)."""


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    last_code: int | None = None
    done: bool = False
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs `processes` copies of `command` until they finish or a stop signal arrives.

    Args:
        command: argv of one worker process. Put no secret in it: `ps` shows it to every user.
        processes: how many run at once.
        graceful_shutdown_time: the children's own grace period; after it (plus a margin)
            children still running are killed.
        restart_finished: start a new child when one exits 0 (it was recycled after its
            message limit); False for `--burst`, where exit 0 means the queues are drained.
        env: variables added to each child's environment (which is otherwise this process's);
            the place for secrets such as broker URLs.
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        graceful_shutdown_time: float,
        restart_finished: bool,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.env = dict(env or {})
        self.slots = [_Slot(i) for i in range(processes)]
        self.graceful_shutdown_time = graceful_shutdown_time
        self.restart_finished = restart_finished
        self.restarts = 0
        self._stopping = False
        self._stop_deadline = 0.0
        self._wake = threading.Event()

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            logger.warning("second %s: killing the workers", signal.Signals(signum).name)
            self._signal_children(signal.SIGKILL)
        else:
            self.stop()
        self._wake.set()

    def stop(self) -> None:
        """Start a graceful shutdown: SIGTERM to every child, no more restarts."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.graceful_shutdown_time + _KILL_MARGIN
        logger.info("stopping %d worker process(es)", self._alive())
        self._signal_children(signal.SIGTERM)

    def _signal_children(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # exited in between
                    slot.process.send_signal(sig)

    def _alive(self) -> int:
        return sum(1 for s in self.slots if s.process is not None and s.process.poll() is None)

    # -- children --------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        env = {**os.environ, **self.env}
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        env[WORKER_INDEX_ENV] = str(slot.index)
        slot.process = subprocess.Popen(self.command, env=env)
        slot.started_at = time.monotonic()
        slot.restart_at = None
        slot.pids.append(slot.process.pid)
        logger.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def _on_exit(self, slot: _Slot, code: int) -> None:
        assert slot.process is not None
        pid = slot.process.pid
        slot.process = None
        slot.last_code = code
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if self._stopping:
            if code == -signal.SIGTERM:
                # Our SIGTERM arrived before the child installed its handlers, i.e. while it
                # was still importing: it had taken no message, so this is a clean stop.
                slot.last_code = 0
            logger.info("worker %d (pid %d) %s", slot.index, pid, how)
            slot.done = True
        elif code == 0 and not self.restart_finished:
            logger.info("worker %d (pid %d) finished", slot.index, pid)
            slot.done = True
        elif code == 0:
            logger.info("worker %d (pid %d) recycled after its message limit", slot.index, pid)
            slot.crashes = 0
            slot.restart_at = time.monotonic()
        else:
            lived = time.monotonic() - slot.started_at
            slot.crashes = 1 if lived >= _HEALTHY_AFTER else slot.crashes + 1
            backoff = 0.0 if slot.crashes == 1 else min(0.5 * 2 ** (slot.crashes - 2), _MAX_BACKOFF)
            logger.warning(
                "worker %d (pid %d) %s; restarting in %.1f s", slot.index, pid, how, backoff
            )
            slot.restart_at = time.monotonic() + backoff

    def _tick(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is not None:
                code = slot.process.poll()
                if code is not None:
                    self._on_exit(slot, code)
            if slot.process is not None or slot.done:
                continue
            if self._stopping:  # a restart was pending: drop it
                slot.done = True
            elif slot.restart_at is not None and now >= slot.restart_at:
                self.restarts += 1
                self._start(slot)
        if self._stopping and now >= self._stop_deadline and self._alive():
            logger.warning("workers still running after the grace period: killing them")
            self._signal_children(signal.SIGKILL)
            self._stop_deadline = float("inf")

    def run(self, *, handle_signals: bool = True) -> int:
        """Supervise until every child is done; 0 when each child's last exit was clean.

        `handle_signals=False` leaves SIGTERM/SIGINT alone (any thread may then run it; call
        `stop()` to end it), as `repid.WorkerPool` does.
        """
        handled = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for slot in self.slots:
                self._start(slot)
            while not all(slot.done for slot in self.slots):
                self._wake.wait(_POLL_INTERVAL)
                self._wake.clear()
                self._tick()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._signal_children(signal.SIGKILL)  # only reached early on an error of ours
        return 0 if all(slot.last_code == 0 for slot in self.slots) else 1
