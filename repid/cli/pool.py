"""`WorkerPool`: N worker processes from Python, kept alive by the supervisor of
`repid run --processes N` (restarts, graceful stop), run in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from repid.cli.supervisor import Supervisor
from repid.errors import ConfigurationError

__all__ = ["WorkerPool"]


class WorkerPool:
    """Run `processes` worker processes for `target`, as `repid run TARGET --processes N` does.

    Args:
        target: what `repid run` takes: `module:attr` naming a Worker, a Router, a Repid app
            or a factory.
        processes: how many worker processes run at once.
        options: more `repid run` options for each child, e.g. `["--concurrency", "10"]` or
            `["--burst"]` (put no secret here: command lines are visible to every local user).
        env: variables added to the children's environment: the place for broker URLs
            (`REPID_BROKER_URL`, ...), which carry passwords.
        graceful_shutdown_time: the children's grace period on `stop()`; children still running
            after it (plus a margin) are killed.
    """

    def __init__(
        self,
        target: str,
        processes: int = 1,
        *,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
        graceful_shutdown_time: float = 25.0,
    ) -> None:
        if processes < 1:
            raise ConfigurationError("processes must be >= 1")
        from repid.cli.app import build_parser
        from repid.cli.run import child_command, child_env

        argv = ["run", target, "--processes", str(processes), *options]
        argv += ["--graceful-shutdown-time", str(graceful_shutdown_time)]
        args = build_parser().parse_args(argv)
        self.supervisor = Supervisor(
            child_command(args),
            processes,
            graceful_shutdown_time=graceful_shutdown_time,
            restart_finished=not args.burst,
            env={**child_env(args), **(env or {})},
        )
        self._thread: threading.Thread | None = None
        self.exit_code: int | None = None
        """0 when every child's last exit was clean, 1 otherwise; None until `join()` ends."""

    @property
    def pids(self) -> list[int]:
        """Process ids of the children running now."""
        return [
            slot.process.pid
            for slot in self.supervisor.slots
            if slot.process is not None and slot.process.poll() is None
        ]

    def start(self) -> None:
        """Start the children (returns at once; a thread supervises them)."""
        if self._thread is not None:
            raise RuntimeError("this WorkerPool was already started")

        def supervise() -> None:
            self.exit_code = self.supervisor.run(handle_signals=False)

        self._thread = threading.Thread(target=supervise, name="repid-worker-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Start a graceful shutdown of every child (SIGTERM); `join()` waits for it."""
        self.supervisor.stop()
        self.supervisor._wake.set()

    def join(self, timeout: float | None = None) -> int | None:
        """Wait until every child is done (at most `timeout` seconds); the exit code, or None
        while they still run."""
        if self._thread is None:
            raise RuntimeError("start() the WorkerPool first")
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.exit_code
