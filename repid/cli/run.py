"""`repid run`: a worker for the target's actors in this process, or N supervised children."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from repid._redact import mask_urls
from repid._version import __version__
from repid.cli.combine import check_targets, connect_targets
from repid.cli.options import (
    TARGET_HELP,
    URL_ENV,
    add_connection_options,
    non_negative_float,
    positive_int,
    queue_list,
)
from repid.cli.session import actors_of
from repid.cli.supervisor import SUPERVISOR_PID_ENV, Supervisor
from repid.cli.target import CLIError, Target, connection_from_url, load_app
from repid.connection import Connection
from repid.errors import BrokerAuthenticationError, BrokerUnavailableError
from repid.router import Router
from repid.worker import Worker

__all__ = ["add_parser", "build_worker", "child_command", "child_env", "command_run"]

logger = logging.getLogger("repid.cli")

_ORPHAN_CHECK_INTERVAL = 0.25
"""How often a supervised worker checks that its supervisor is still alive."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid run`."""
    run = subparsers.add_parser(
        "run",
        help="run a worker",
        description="Run a worker for the actors of TARGET until SIGTERM/SIGINT "
        "(or, with --burst, until its queues are drained). Several targets, packages "
        "(PACKAGE/ or --scan PACKAGE: every module imported, every module-level Router "
        "collected) or both run in one worker, on the one connection they agree on.",
    )
    run.add_argument(
        "target",
        metavar="TARGET",
        nargs="*",
        help=TARGET_HELP + "; or a package (name or directory, PACKAGE/) to scan; give several "
        "to run them together (or give one as -A/--app)",
    )
    run.add_argument(
        "--scan",
        action="append",
        metavar="PACKAGE",
        help="import every module of PACKAGE (a dotted name or a directory) and run the actors "
        "of every Router defined at their top level; repeatable. With --scan and no TARGET, "
        "-A/--app names the Repid app whose connection to use",
    )
    run.add_argument("--concurrency", type=positive_int, help="actors running at once, per process")
    run.add_argument("--queues", type=queue_list, metavar="A,B", help="only consume these queues")
    run.add_argument("--burst", action="store_true", help="process the ready messages, then exit")
    run.add_argument(
        "--processes", type=positive_int, default=1, help="worker processes (default 1)"
    )
    run.add_argument(
        "--max-jobs-per-child",
        type=positive_int,
        metavar="N",
        help="replace a worker process by a fresh one after it processed N messages",
    )
    run.add_argument(
        "--graceful-shutdown-time",
        type=non_negative_float,
        metavar="SECONDS",
        help="time running actors get to finish on shutdown (default: the worker's, 25)",
    )
    run.add_argument(
        "--startup-timeout",
        type=non_negative_float,
        default=60.0,
        metavar="SECONDS",
        help="how long the worker keeps retrying an unreachable broker at start-up before "
        "it exits with an error (default 60; 0: fail at once)",
    )
    run.add_argument(
        "--log-jobs",
        action="store_true",
        help='log an INFO line per finished job ("succeeded in 0.012s")',
    )
    run.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the worker when a .py file under the current directory "
        "changes (needs watchfiles: pip install 'repid[reload]')",
    )
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    add_connection_options(run)
    run.set_defaults(handler=command_run)


def build_worker(
    target: Target,
    connection: Connection,
    *,
    concurrency: int | None = None,
    queues: Sequence[str] | None = None,
    graceful_shutdown_time: float | None = None,
    messages_limit: int | None = None,
    log_jobs: bool = False,
) -> Worker:
    """A worker for the target's actors; options left None keep the target Worker's settings."""
    actors = actors_of(target.routers)
    if not actors:
        raise CLIError("the target has no actors")
    if queues:
        listened = {actor.queue for actor in actors.values()}
        unknown = [name for name in queues if name not in listened]
        if unknown:
            raise CLIError(
                f"no actor listens on queue(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(listened))}"
            )
        actors = {name: a for name, a in actors.items() if a.queue in queues}
    selected = Router()
    selected.actors.update(actors)
    base = target.worker
    options: dict[str, Any] = {}
    if base is not None:
        options = {
            "graceful_shutdown_time": base.graceful_shutdown_time,
            "messages_limit": base.messages_limit,
            "tasks_limit": base.tasks_limit,
            "handle_signals": base.handle_signals,
            "auto_declare": base.auto_declare,
            "run_health_check_server": base.run_health_check_server,
            "health_check_server_settings": base.health_check_server_settings,
            "log_jobs": base.log_jobs,
        }
        if base.prefetch != base.tasks_limit:  # set apart from the concurrency: kept
            options["prefetch"] = base.prefetch
    if concurrency is not None:
        options["tasks_limit"] = concurrency
    if graceful_shutdown_time is not None:
        options["graceful_shutdown_time"] = graceful_shutdown_time
    if messages_limit is not None:
        options["messages_limit"] = messages_limit
    if log_jobs:
        options["log_jobs"] = True
    return Worker([selected], _connection=connection, **options)


class _StopSignals:
    """SIGTERM/SIGINT before (and after) `Worker.run` installs its own handlers stop the worker
    gracefully instead of killing the process mid-start-up."""

    def __init__(self) -> None:
        self.requested = False
        self.worker: Worker | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.worker is not None:
            self.worker.stop()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        """Put back the handlers found by the first `install` (`main` may run in-process)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def attach(self, worker: Worker) -> None:
        self.worker = worker
        if self.requested:
            worker.stop()


async def _watch_supervisor(worker: Worker, supervisor_pid: int) -> None:
    """Stop the worker if its supervisor died (the child was re-parented)."""
    while True:
        await asyncio.sleep(_ORPHAN_CHECK_INTERVAL)
        if os.getppid() != supervisor_pid:
            break
    logger.warning("supervisor (pid %d) is gone: stopping", supervisor_pid)
    worker.stop()


async def _connect_patiently(
    args: argparse.Namespace, signals: _StopSignals
) -> tuple[Target, Connection] | None:
    """`connect_targets`, retried with backoff while the broker is unreachable, for
    `--startup-timeout`.

    A worker started before its broker (a deploy, a host reboot) waits for it instead of
    exiting; None when a stop signal arrives while it waits.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.startup_timeout
    pause = 0.25
    while True:
        try:
            return await connect_targets(args)
        except BrokerAuthenticationError:
            raise  # a refused login does not heal by waiting: one line, at once
        except BrokerUnavailableError as exc:
            left = deadline - loop.time()
            if left <= 0:
                raise
            logger.warning(
                "the broker is unreachable (%s); retrying for up to %.1f s more",
                mask_urls(str(exc)),
                left,
            )
        pause_until = loop.time() + min(pause, max(0.0, deadline - loop.time()))
        while loop.time() < pause_until:  # short steps: a stop signal ends the wait promptly
            if signals.requested:
                return None
            await asyncio.sleep(min(0.05, pause_until - loop.time()))
        if signals.requested:
            return None
        pause = min(pause * 2, 2.0)


def _describe(broker: object) -> str:
    """A broker for the banner: its own (masked) repr, else its class name (no `object at 0x`)."""
    if type(broker).__repr__ is object.__repr__:
        return type(broker).__name__
    return mask_urls(repr(broker))


async def _run_in_process(args: argparse.Namespace, signals: _StopSignals) -> int:
    connected = await _connect_patiently(args, signals)
    if connected is None:
        logger.info("stopped before the broker could be reached")
        return 0
    target, connection = connected
    worker = build_worker(
        target,
        connection,
        concurrency=args.concurrency,
        queues=args.queues,
        graceful_shutdown_time=args.graceful_shutdown_time,
        messages_limit=args.max_jobs_per_child,
        log_jobs=args.log_jobs,
    )
    signals.attach(worker)
    supervisor_pid = os.environ.get(SUPERVISOR_PID_ENV) if args.supervised else None
    logger.info(
        "repid %s worker (pid %d) consuming %s: broker %s, concurrency %d, %d actor(s)",
        __version__,
        os.getpid(),
        ", ".join(worker.queues),
        _describe(connection.message_broker),
        worker.tasks_limit,
        len(worker.actors),
    )
    async with asyncio.TaskGroup() as group:
        watcher = (
            group.create_task(_watch_supervisor(worker, int(supervisor_pid)))
            if supervisor_pid
            else None
        )
        try:
            runner = await worker.run(drain=args.burst)
        finally:
            signals.install()  # `run` restored the default handlers: keep shutdown graceful
            if watcher is not None:
                watcher.cancel()
    logger.info(
        "worker (pid %d) stopped: %d processed, %d succeeded, %d failed, %d retried, "
        "%d dead-lettered",
        os.getpid(),
        runner.processed,
        runner.succeeded,
        runner.failed,
        runner.retried,
        runner.dead_lettered,
    )
    await connection.disconnect()
    return 0


def child_command(args: argparse.Namespace) -> list[str]:
    """The command line of a supervised child: the same options, no URL (see `child_env`)."""
    command = [sys.executable, "-m", "repid.cli", "--log-level", args.log_level]
    targets = [args.target] if isinstance(args.target, str) else list(args.target)
    command += ["run", *targets, "--supervised"]
    for package in getattr(args, "scan", None) or []:
        command += ["--scan", package]
    if args.concurrency is not None:
        command += ["--concurrency", str(args.concurrency)]
    if args.queues:
        command += ["--queues", ",".join(args.queues)]
    if args.burst:
        command.append("--burst")
    if args.max_jobs_per_child is not None:
        command += ["--max-jobs-per-child", str(args.max_jobs_per_child)]
    if args.graceful_shutdown_time is not None:
        command += ["--graceful-shutdown-time", str(args.graceful_shutdown_time)]
    command += ["--startup-timeout", str(args.startup_timeout)]
    if args.log_jobs:
        command.append("--log-jobs")
    if args.app:
        command += ["--app", args.app]
    return command


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """The URL options of the children, as environment variables.

    URLs carry passwords, and a command line is readable by every local user (`ps`,
    `/proc/<pid>/cmdline`) while the environment is readable only by the same user.
    """
    return {
        variable: getattr(args, option)
        for option, variable in URL_ENV.items()
        if getattr(args, option)
    }


def command_run(args: argparse.Namespace) -> int:
    """Run the worker (or the supervisor of N workers) until it stops; the exit status."""
    if args.reload and not args.supervised:
        from repid.cli.reload import run_reloading

        check_targets(args, explicit=bool(args.app or args.broker))  # once, not per restart
        return run_reloading(child_command(args), env=child_env(args))
    supervise = not args.supervised and (args.processes > 1 or args.max_jobs_per_child)
    if supervise:
        check_targets(args, explicit=bool(args.app or args.broker))  # once, not per child
        if args.app:
            load_app(args.app)
        if args.broker:
            connection_from_url(args.broker, args.results, args.state)
        return Supervisor(
            child_command(args),
            args.processes,
            graceful_shutdown_time=(
                25.0 if args.graceful_shutdown_time is None else args.graceful_shutdown_time
            ),
            restart_finished=not args.burst,
            env=child_env(args),
        ).run()
    signals = _StopSignals()
    signals.install()
    try:
        return asyncio.run(_run_in_process(args, signals))
    finally:
        signals.restore()
