"""The `repid` command: run workers, describe actors as AsyncAPI, inspect and repair queues.

`main(argv)` is the console script; each subcommand is a thin layer over a function of
`repid.cli.operations`, `repid.cli.supervisor` or `repid.asyncapi`. See `docs/cli.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from repid._redact import mask_urls
from repid.asyncapi import build_asyncapi
from repid.cli.operations import (
    enqueue,
    list_dead,
    parse_args_json,
    purge_dead,
    queue_sizes,
    requeue_dead,
)
from repid.cli.supervisor import SUPERVISOR_PID_ENV, Supervisor
from repid.cli.target import (
    CLIError,
    Target,
    connection_from_url,
    import_object,
    load_app,
    resolve_connection,
    resolve_target,
)
from repid.connection import Connection
from repid.data import PrioritiesT
from repid.errors import BrokerError, BrokerUnavailableError, RepidError
from repid.main import Repid
from repid.queue import Queue
from repid.router import ActorData, Router
from repid.worker import Worker

__all__ = ["CLIError", "build_parser", "build_worker", "main"]

logger = logging.getLogger("repid.cli")

_ORPHAN_CHECK_INTERVAL = 0.25
"""How often a supervised worker checks that its supervisor is still alive."""


# -- argument parsing ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _queue_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated queue names")
    return names


_TARGET_HELP = (
    "module:attr naming a Worker, a Router, a list of routers, a Repid app (its module's routers "
    "are used) or a function returning one of these"
)


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (default: the target's own Repid app)")
    group.add_argument("--app", metavar="MODULE:APP", help="a Repid app whose connection to use")
    group.add_argument(
        "--broker",
        metavar="URL",
        default=os.environ.get("REPID_BROKER_URL"),
        help=(
            "broker URL: memory://, redis://host:port/db, amqp://user:pass@host/vhost, "
            "kafka://host:port or nats://host:port (env REPID_BROKER_URL)"
        ),
    )
    group.add_argument(
        "--results",
        metavar="URL",
        default=os.environ.get("REPID_RESULTS_URL"),
        help=(
            "redis:// URL of the results bucket for --broker amqp:// or kafka:// "
            "(env REPID_RESULTS_URL; redis:// brokers use their own server)"
        ),
    )
    group.add_argument(
        "--state",
        metavar="URL",
        default=os.environ.get("REPID_STATE_URL"),
        help=(
            "redis:// URL of the shared state for --broker amqp:// or kafka:// (unique ids, "
            "cancellations, limits, live workers across processes; ?prefix=... sets the key "
            "prefix; env REPID_STATE_URL)"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repid", description="Run repid workers and operate their queues."
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run a worker",
        description="Run a worker for the actors of TARGET until SIGTERM/SIGINT "
        "(or, with --burst, until its queues are drained).",
    )
    run.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
    run.add_argument(
        "--concurrency", type=_positive_int, help="actors running at once, per process"
    )
    run.add_argument("--queues", type=_queue_list, metavar="A,B", help="only consume these queues")
    run.add_argument("--burst", action="store_true", help="process the ready messages, then exit")
    run.add_argument(
        "--processes", type=_positive_int, default=1, help="worker processes (default 1)"
    )
    run.add_argument(
        "--max-jobs-per-child",
        type=_positive_int,
        metavar="N",
        help="replace a worker process by a fresh one after it processed N messages",
    )
    run.add_argument(
        "--graceful-shutdown-time",
        type=_non_negative_float,
        metavar="SECONDS",
        help="time running actors get to finish on shutdown (default: the worker's, 25)",
    )
    run.add_argument(
        "--startup-timeout",
        type=_non_negative_float,
        default=60.0,
        metavar="SECONDS",
        help="how long the worker keeps retrying an unreachable broker at start-up before "
        "it exits with an error (default 60; 0: fail at once)",
    )
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    _add_connection_options(run)

    asyncapi = commands.add_parser(
        "asyncapi",
        help="write the AsyncAPI 3.0 document of the actors",
        description="Write an AsyncAPI 3.0 document: a channel per queue, a receive "
        "operation per actor, the actor's arguments as the message payload.",
    )
    asyncapi.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
    asyncapi.add_argument("--output", "-o", metavar="FILE", help="write here (default stdout)")
    asyncapi.add_argument("--title", help="info.title (default: the target's module name)")
    asyncapi.add_argument(
        "--app-version", default="1.0.0", help="info.version: your application's version"
    )

    queues = commands.add_parser(
        "queues",
        help="show queue sizes",
        description="Show ready, delayed, in-flight and dead messages per queue.",
    )
    queues.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
    queues.add_argument("--json", action="store_true", help="print JSON")
    _add_connection_options(queues)

    declare = commands.add_parser(
        "declare",
        help="declare the queues of the actors",
        description="Declare every queue the target's actors use (and its delayed and dead "
        "parts), as `repid run` does at start-up; a deployment step before producers start.",
    )
    declare.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
    _add_connection_options(declare)

    workers = commands.add_parser(
        "workers",
        help="list live workers",
        description="List the workers that heartbeat on the broker: queues, concurrency, "
        "jobs in flight and when each was last heard from.",
    )
    workers.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
    workers.add_argument("--json", action="store_true", help="print JSON")
    _add_connection_options(workers)

    dead = commands.add_parser(
        "dead", help="list, requeue or purge dead letters", description="Manage dead letters."
    )
    dead_commands = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list the dead messages of QUEUE"),
        ("requeue", "send every dead message of QUEUE back to work, with fresh retries"),
        ("purge", "delete every dead message of QUEUE"),
    ):
        sub = dead_commands.add_parser(name, help=text, description=text[0].upper() + text[1:])
        sub.add_argument("queue", metavar="QUEUE")
        sub.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
        if name == "list":
            sub.add_argument("--limit", type=_positive_int, help="show at most this many")
            sub.add_argument("--json", action="store_true", help="print JSON lines")
        _add_connection_options(sub)

    enqueue_parser = commands.add_parser(
        "enqueue",
        help="enqueue one job",
        description="Enqueue one job for ACTOR; prints its message id. Arguments are checked "
        "against the actor when the app's module defines it.",
    )
    enqueue_parser.add_argument("actor", metavar="ACTOR")
    enqueue_parser.add_argument(
        "--args", default="{}", metavar="JSON", help="keyword arguments as a JSON object"
    )
    enqueue_parser.add_argument("--queue", help="default: the actor's queue, else 'default'")
    enqueue_parser.add_argument("--priority", choices=["high", "medium", "low"], default="medium")
    enqueue_parser.add_argument(
        "--delay", type=_non_negative_float, metavar="SECONDS", help="run no earlier than this"
    )
    _add_connection_options(enqueue_parser)
    return parser


# -- shared helpers -------------------------------------------------------------------------


def _explicit_connection(args: argparse.Namespace) -> Connection | None:
    if getattr(args, "app", None):
        return load_app(args.app).connection
    if getattr(args, "broker", None):
        return connection_from_url(
            args.broker, getattr(args, "results", None), getattr(args, "state", None)
        )
    return None


async def _connect(args: argparse.Namespace) -> tuple[Target, Connection]:
    explicit = _explicit_connection(args)
    if explicit is not None:  # a factory target may enqueue: give it the connection
        await _open(explicit)
        Repid.set_magic_connection(explicit)
    module, target = await resolve_target(args.target)
    connection = resolve_connection(module, target, explicit=explicit)
    await _open(connection)
    Repid.set_magic_connection(connection)
    return target, connection


_OPENED: list[Connection] = []
"""Connections a one-shot command opened; closed when it ends (see `_one_shot`)."""


async def _open(connection: Connection) -> None:
    await connection.connect()
    if connection not in _OPENED:
        _OPENED.append(connection)


async def _one_shot(args: argparse.Namespace) -> int:
    """Run an async command, then close what it opened (cleanly, whatever the outcome)."""
    try:
        return await _ASYNC_COMMANDS[args.command](args)
    finally:
        while _OPENED:
            with contextlib.suppress(Exception):
                await _OPENED.pop().disconnect()


def _actors(routers: Sequence[Router]) -> dict[str, ActorData]:
    actors: dict[str, ActorData] = {}
    for router in routers:
        actors.update(router.actors)
    return actors


def build_worker(
    target: Target,
    connection: Connection,
    *,
    concurrency: int | None = None,
    queues: Sequence[str] | None = None,
    graceful_shutdown_time: float | None = None,
    messages_limit: int | None = None,
) -> Worker:
    """A worker for the target's actors; options left None keep the target Worker's settings."""
    actors = _actors(target.routers)
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
        }
    if concurrency is not None:
        options["tasks_limit"] = concurrency
    if graceful_shutdown_time is not None:
        options["graceful_shutdown_time"] = graceful_shutdown_time
    if messages_limit is not None:
        options["messages_limit"] = messages_limit
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


# -- commands -------------------------------------------------------------------------------


async def _connect_patiently(
    args: argparse.Namespace, signals: _StopSignals
) -> tuple[Target, Connection] | None:
    """`_connect`, retried with backoff while the broker is unreachable, for `--startup-timeout`.

    A worker started before its broker (a deploy, a host reboot) waits for it instead of
    exiting; None when a stop signal arrives while it waits.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.startup_timeout
    pause = 0.25
    while True:
        try:
            return await _connect(args)
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
    )
    signals.attach(worker)
    supervisor_pid = os.environ.get(SUPERVISOR_PID_ENV) if args.supervised else None
    logger.info(
        "worker (pid %d) consuming %s with %d actor(s)",
        os.getpid(),
        ", ".join(worker.queues),
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
        "worker (pid %d) stopped: %d processed, %d succeeded, %d failed, %d dead-lettered",
        os.getpid(),
        runner.processed,
        runner.succeeded,
        runner.failed,
        runner.dead_lettered,
    )
    await connection.disconnect()
    return 0


def _child_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "repid.cli", "--log-level", args.log_level]
    command += ["run", args.target, "--supervised"]
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
    if args.app:
        command += ["--app", args.app]
    return command


_URL_ENV = {
    "broker": "REPID_BROKER_URL",
    "results": "REPID_RESULTS_URL",
    "state": "REPID_STATE_URL",
}
"""Where a supervised child finds each URL option: its environment, not its argv."""


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    """The URL options of the children, as environment variables.

    URLs carry passwords, and a command line is readable by every local user (`ps`,
    `/proc/<pid>/cmdline`) while the environment is readable only by the same user.
    """
    return {
        variable: getattr(args, option)
        for option, variable in _URL_ENV.items()
        if getattr(args, option)
    }


def _command_run(args: argparse.Namespace) -> int:
    supervise = not args.supervised and (args.processes > 1 or args.max_jobs_per_child)
    if supervise:
        import_object(args.target)  # fail here, once, rather than in every child
        if args.app:
            load_app(args.app)
        if args.broker:
            connection_from_url(args.broker, args.results, args.state)
        return Supervisor(
            _child_command(args),
            args.processes,
            graceful_shutdown_time=(
                25.0 if args.graceful_shutdown_time is None else args.graceful_shutdown_time
            ),
            restart_finished=not args.burst,
            env=_child_env(args),
        ).run()
    signals = _StopSignals()
    signals.install()
    try:
        return asyncio.run(_run_in_process(args, signals))
    finally:
        signals.restore()


async def _command_asyncapi(args: argparse.Namespace) -> int:
    module, target = await resolve_target(args.target)
    document = build_asyncapi(
        target.routers,
        title=args.title or module.__name__,
        version=args.app_version,
    )
    text = json.dumps(document, indent=2) + "\n"
    if args.output:
        try:
            await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot write {args.output!r}: {exc.strerror}") from exc
    else:
        sys.stdout.write(text)
    return 0


async def _command_queues(args: argparse.Namespace) -> int:
    target, connection = await _connect(args)
    listened = sorted({a.queue for a in _actors(target.routers).values()})
    sizes = await queue_sizes(connection, listened)
    if args.json:
        print(json.dumps([asdict(s) for s in sizes]))
        return 0
    header = ("QUEUE", "READY", "DELAYED", "IN_FLIGHT", "DEAD")
    rows = [header] + [
        (s.name, *(str(n) for n in (s.ready, s.delayed, s.in_flight, s.dead)))
        if s.declared
        else (s.name, "-", "-", "-", "-")
        for s in sizes
    ]
    width = max(len(row[0]) for row in rows)
    for row in rows:
        print(row[0].ljust(width) + "".join(cell.rjust(10) for cell in row[1:]))
    return 0


async def _command_declare(args: argparse.Namespace) -> int:
    target, connection = await _connect(args)
    names = sorted({a.queue for a in _actors(target.routers).values()})
    for name in names:
        await Queue(name, _connection=connection).declare()
        print(f"declared {name}")
    return 0


async def _command_workers(args: argparse.Namespace) -> int:
    _, connection = await _connect(args)
    try:
        workers = await connection.live_workers()
    except BrokerError as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps([asdict(w) for w in workers]))
        return 0
    now = time.time()
    rows = [("WORKER", "QUEUES", "CONCURRENCY", "IN_FLIGHT", "LAST_SEEN")]
    rows += [
        (
            w.id,
            ",".join(w.queues),
            str(w.concurrency),
            str(w.in_flight),
            f"{max(0.0, now - w.last_seen):.0f}s ago",
        )
        for w in workers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


async def _command_dead(args: argparse.Namespace) -> int:
    _, connection = await _connect(args)
    if args.dead_command == "list":
        letters = await list_dead(connection, args.queue, args.limit)
        for letter in letters:
            if args.json:
                print(json.dumps(asdict(letter)))
                continue
            when = datetime.fromtimestamp(letter.dead_at, UTC).isoformat(timespec="seconds")
            print(
                f"{letter.id_}  {letter.actor}  {letter.reason}  attempts={letter.attempts}  "
                f"{when}  {letter.error}".rstrip()
            )
        if not args.json:
            print(f"{len(letters)} dead message(s) in {args.queue!r}", file=sys.stderr)
    elif args.dead_command == "requeue":
        count = await requeue_dead(connection, args.queue)
        print(f"requeued {count} dead message(s) of {args.queue!r}")
    else:
        count = await purge_dead(connection, args.queue)
        print(f"purged {count} dead message(s) of {args.queue!r}")
    return 0


async def _command_enqueue(args: argparse.Namespace) -> int:
    kwargs = parse_args_json(args.args)
    if not args.app and not args.broker:
        raise CLIError("enqueue needs --app MODULE:APP (or --broker URL)")
    actors: dict[str, ActorData] = {}
    if args.app:
        module, _ = import_object(args.app)
        actors = _actors([v for v in vars(module).values() if isinstance(v, Router)])
    connection = _explicit_connection(args)
    assert connection is not None
    await _open(connection)
    message_id = await enqueue(
        connection,
        args.actor,
        kwargs,
        queue=args.queue,
        priority=PrioritiesT[args.priority.upper()],
        delay=args.delay,
        actors=actors,
    )
    print(message_id)
    return 0


_ASYNC_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "asyncapi": _command_asyncapi,
    "queues": _command_queues,
    "declare": _command_declare,
    "workers": _command_workers,
    "dead": _command_dead,
    "enqueue": _command_enqueue,
}


@contextlib.contextmanager
def _logging(level: str, *, libraries: bool) -> Iterator[None]:
    """repid's logs at `level` on stderr; client libraries' warnings too when `libraries`.

    A worker (`run`) shows what its broker client says (reconnects, for instance). One-shot
    commands do not: their failure is reported once, as the one-line error, so the client
    library's own log line (which Python would print through its last-resort handler) is
    dropped.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("repid")
    root = logging.getLogger()
    previous = ours.level
    ours.setLevel(level)
    others: logging.Handler = handler if libraries else logging.NullHandler()
    if libraries:
        root.addHandler(handler)
    else:
        ours.addHandler(handler)
        ours.propagate = False
        root.addHandler(others)
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.propagate = True
        root.removeHandler(others)
        ours.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `repid` command; returns the exit status (errors: one line on stderr, 1)."""
    args = build_parser().parse_args(argv)
    with _logging(args.log_level, libraries=args.command == "run"):
        try:
            if args.command == "run":
                return _command_run(args)
            return asyncio.run(_one_shot(args))
        except (RepidError, ValueError) as exc:
            if args.traceback:
                sys.stderr.write(mask_urls(traceback.format_exc()))
            message = mask_urls(" ".join(str(exc).split())) or type(exc).__name__
            print(f"repid: error: {message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
