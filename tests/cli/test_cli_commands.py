"""Argument parsing, target resolution and the one-line errors of the `repid` command."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from repid import Connection, InMemoryMessageBroker, Repid, Router, Worker
from repid.cli import build_parser, build_worker, main
from repid.cli.target import CLIError, Target, connection_from_url, resolve_target

SUBCOMMANDS = [
    ["run"],
    ["asyncapi"],
    ["queues"],
    ["declare"],
    ["workers"],
    ["dead"],
    ["dead", "list"],
    ["dead", "requeue"],
    ["dead", "purge"],
    ["enqueue"],
    ["queue"],
    ["queue", "flush"],
    ["queue", "delete"],
    ["job"],
]


def repid_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repid.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: repid")


def test_help_via_module(cli_env, tmp_path) -> None:
    result = repid_cli(cli_env, tmp_path, "--help")
    assert result.returncode == 0
    for name in ("run", "asyncapi", "queues", "dead", "enqueue"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["queues", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["queues", "cli_shop_app:nope"], "has no attribute 'nope'"),
        (["queues", "cli_shop_app:Currency"], "is a EnumType; expected a Worker"),
        (["queues", "cli_shop_app:orders", "--broker", "mongodb://x"], "unknown broker URL"),
        (["run", "cli_shop_app:orders", "--broker", "mqtt://x", "--burst"], "unknown broker URL"),
        (["queues", "cli_shop_app:orders", "--broker", "amqp://x", "--results", "x://"], "results"),
        (["run", "cli_shop_app:orders", "--queues", "nope", "--burst"], "no actor listens"),
        (["enqueue", "place_order", "--args", "[1]", "--app", "cli_shop_app:app"], "JSON object"),
        (["enqueue", "place_order", "--args", "{}", "--app", "cli_shop_app:app"], "do not fit"),
        (["enqueue", "place_order"], "needs --app"),
        (["queue", "flush", "orders", "--yes"], "queue flush needs --broker URL"),
        (["enqueue", "x", "--app", "cli_shop_app:orders"], "not a Repid app"),
        (["asyncapi", "cli_shop_app:orders", "-o", "/no/such/dir/x.json"], "cannot write"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(args, message, capsys) -> None:
    assert main(["--log-level", "ERROR", *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("repid: error: ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["queues", "cli_shop_app:orders", "--broker", "redis://127.0.0.1:1/0"], "Redis"),
        (
            ["queues", "cli_shop_app:orders", "--broker", "amqp://guest:guest@127.0.0.1:1/"],
            "Rabbit",
        ),
        (
            ["run", "cli_shop_app:orders", "--processes", "2", "--broker", "mongodb://h"],
            "unknown broker URL",
        ),
    ],
)
def test_errors_of_the_module_entry_point(cli_env, tmp_path, args, message) -> None:
    result = repid_cli(cli_env, tmp_path, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("repid: error: ")
    assert message in lines[0]


def test_usage_errors_exit_2(cli_env, tmp_path) -> None:
    result = repid_cli(cli_env, tmp_path, "run", "x:y", "--processes", "0")
    assert result.returncode == 2
    assert "must be >= 1" in result.stderr


def test_enqueue_and_queues_in_a_subprocess(cli_env, tmp_path) -> None:
    result = repid_cli(
        cli_env,
        tmp_path,
        "enqueue",
        "cancel_order",
        "--args",
        '{"order_id": 7}',
        "--app",
        "cli_shop_app:app",
        "--priority",
        "high",
    )
    assert result.returncode == 1  # the in-memory queue of a fresh process is not declared
    assert "queue 'orders' is not declared on the broker" in result.stderr
    result = repid_cli(cli_env, tmp_path, "queues", "cli_shop_app:routers", "--json")
    assert result.returncode == 0, result.stderr
    assert '"name": "orders", "declared": false' in result.stdout


# -- in-process ---------------------------------------------------------------------------


def make_module(**attrs: object) -> str:
    name = f"cli_test_target_{len(sys.modules)}"
    module = types.ModuleType(name)
    vars(module).update(attrs)
    sys.modules[name] = module
    return name


def router_with(queue: str, name: str) -> Router:
    router = Router()
    router.actor(name=name, queue=queue)(lambda: None)
    return router


async def test_targets_resolve_to_routers_and_connections() -> None:
    a, b = router_with("qa", "a"), router_with("qb", "b")
    app = Repid(Connection(InMemoryMessageBroker()))
    worker = Worker([a], _connection=app.connection)

    async def factory() -> list[Router]:
        return [a, b]

    name = make_module(a=a, b=b, app=app, worker=worker, factory=factory, sync=lambda: b)
    _, target = await resolve_target(f"{name}:a")
    assert target.routers == [a]
    assert target.connection is None
    _, target = await resolve_target(f"{name}:worker")
    assert target.worker is worker
    assert target.connection is app.connection
    _, target = await resolve_target(f"{name}:factory")
    assert target.routers == [a, b]
    _, target = await resolve_target(f"{name}:sync")
    assert target.routers == [b]
    _, target = await resolve_target(f"{name}:app")
    assert target.routers == [a, b, worker]
    assert target.connection is app.connection
    _, target = await resolve_target(name)  # no attribute: `worker` is looked up first
    assert target.worker is worker


async def test_factory_errors_are_reported() -> None:
    def broken() -> Router:
        raise RuntimeError("boom")

    name = make_module(broken=broken)
    with pytest.raises(CLIError, match=r"factory .* raised RuntimeError: boom"):
        await resolve_target(f"{name}:broken")


async def test_a_factory_runs_with_its_modules_app_connected() -> None:
    # Issue 17: `repid run module:factory` failed with "no default connection" when the
    # module defines one Repid app, although that app is a documented connection source.
    import argparse

    from repid import Queue
    from repid.cli.session import close_opened, connect

    router = router_with("made_by_factory", "made")
    app = Repid(Connection(InMemoryMessageBroker()))

    async def make() -> Router:
        await Queue("made_by_factory").declare()  # needs the default connection
        return router

    name = make_module(app=app, router=router, make=make)
    args = argparse.Namespace(target=f"{name}:make", broker=None, app=None)
    try:
        target, connection = await connect(args)
        assert connection is app.connection
        assert connection.is_open
        assert target.routers == [router]
        assert "made_by_factory" in app.connection.message_broker.queue_names()  # type: ignore[attr-defined]
    finally:
        await close_opened()


def test_build_worker_applies_options_over_the_target_worker() -> None:
    connection = Connection(InMemoryMessageBroker())
    base = Worker(
        [router_with("qa", "a"), router_with("qb", "b")],
        tasks_limit=7,
        graceful_shutdown_time=3,
    )
    target = Target([base], base, None)
    worker = build_worker(target, connection, queues=["qb"], messages_limit=5)
    assert sorted(worker.actors) == ["b"]
    assert (worker.tasks_limit, worker.graceful_shutdown_time, worker.messages_limit) == (7, 3, 5)
    assert worker.connection is connection
    worker = build_worker(target, connection, concurrency=2, graceful_shutdown_time=0)
    assert (worker.tasks_limit, worker.graceful_shutdown_time) == (2, 0)
    with pytest.raises(CLIError, match="no actors"):
        build_worker(Target([Router()], None, None), connection)


@pytest.mark.parametrize(
    ("url", "results", "error"),
    [
        ("mongodb://h", None, "unknown broker URL 'mongodb://h'"),
        ("amqp://guest@h/", "memory://", "results URL 'memory://': expected redis://"),
    ],
)
def test_bad_broker_urls_are_clear_errors(url: str, results: str | None, error: str) -> None:
    with pytest.raises(CLIError, match=error):
        connection_from_url(url, results)


def test_memory_url_gives_an_in_memory_connection() -> None:
    connection = connection_from_url("memory://")
    assert isinstance(connection.raw_message_broker, InMemoryMessageBroker)
    assert connection.raw_results_bucket_broker is not None


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["run", "m:a", "--queues", "a, b"])
    assert args.queues == ["a", "b"]
    assert (args.processes, args.burst, args.concurrency) == (1, False, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["enqueue", "proces_order", "--app", "cli_shop_app:app"],
            "unknown actor 'proces_order' (did you mean 'place_order'?)",
        ),
        (
            ["queues", "cli_shop_app:order", "--broker", "memory://"],
            "no attribute 'order' (did you mean 'cli_shop_app:orders'?)",
        ),
        (
            ["queues", "cli_shop_ap:orders", "--broker", "memory://"],
            "no module named 'cli_shop_ap' (did you mean 'cli_shop_app'?)",
        ),
        (
            ["queues", "repid.cli.targt:x", "--broker", "memory://"],
            "(did you mean 'repid.cli.target'?)",
        ),
        (
            ["enqueue", "place_order", "--broker", "memory://"],
            "queue 'default' is not declared on the broker: start a worker for it, or run "
            "`repid declare TARGET` first",
        ),
    ],
)
def test_typos_name_the_close_match_without_python_hints(args, message, capsys) -> None:
    assert main(["--log-level", "ERROR", *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert "await" not in lines[0]
    assert "Queue(" not in lines[0]


def test_no_suggestion_when_nothing_is_close(capsys) -> None:
    assert main(["enqueue", "zzzzzz", "--app", "cli_shop_app:app"]) == 1
    line = capsys.readouterr().err.strip()
    assert "unknown actor 'zzzzzz'; the app's actors: cancel_order, place_order" in line
    assert "did you mean" not in line


async def test_unknown_actor_with_an_explicit_queue_is_sent() -> None:
    from repid.cli.operations import enqueue
    from repid.queue import Queue

    connection = Connection(InMemoryMessageBroker())
    await connection.connect()
    await Queue("elsewhere", _connection=connection).declare()
    router = Router()

    @router.actor
    async def known() -> None:
        pass

    with pytest.raises(CLIError, match="unknown actor 'knwn' \\(did you mean 'known'\\?\\)"):
        await enqueue(connection, "knwn", {}, actors=router.actors)
    assert await enqueue(
        connection, "other_programs_actor", {}, queue="elsewhere", actors=router.actors
    )
    await connection.disconnect()
