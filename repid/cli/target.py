"""Find what a CLI command works on: the routers named by `module:attr` and the connection.

Resolution is documented in `docs/cli.md`; every failure is a `CLIError` with a one-line message.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pkgutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from repid._redact import mask_url
from repid.brokers.memory import InMemoryBucketBroker, InMemoryMessageBroker
from repid.connection import Connection
from repid.errors import RepidError
from repid.main import Repid
from repid.router import Router
from repid.worker import Worker

__all__ = [
    "DEFAULT_ATTRS",
    "CLIError",
    "Target",
    "connection_from_url",
    "import_module",
    "import_object",
    "kafka_options",
    "load_app",
    "module_app",
    "module_routers",
    "resolve_connection",
    "resolve_target",
    "target_of",
]

DEFAULT_ATTRS = ("worker", "router", "routers", "app")
"""Attributes looked up, in order, when a target names only a module."""

_NETWORK_SCHEMES = {
    "redis": ("Redis", "redis"),
    "rediss": ("Redis", "redis"),
    "amqp": ("RabbitMQ", "rabbitmq"),
    "amqps": ("RabbitMQ", "rabbitmq"),
    "kafka": ("Kafka", "kafka"),
    "nats": ("NATS", "nats"),
    "tls": ("NATS", "nats"),
    "postgresql": ("PostgreSQL", "postgres"),
    "postgres": ("PostgreSQL", "postgres"),
}


class CLIError(RepidError):
    """A command cannot run; its message is shown as one line on stderr."""


def import_object(spec: str) -> tuple[ModuleType, Any]:
    """Import `module:attr` (or `module`, then look for `worker`, `router`, `routers`, `app`).

    `attr` may be dotted (`module:container.router`). The current directory is importable, as
    with `python -m`.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or (":" in spec and not attr):
        raise CLIError(f"invalid target {spec!r}: expected 'module:attribute'")
    module = import_module(module_name)
    if not attr:
        for candidate in DEFAULT_ATTRS:
            if hasattr(module, candidate):
                return module, getattr(module, candidate)
        raise CLIError(
            f"module {module_name!r} has none of {', '.join(DEFAULT_ATTRS)}; "
            "name the object: 'module:attribute'"
        )
    obj: Any = module
    done: list[str] = []
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            close = difflib.get_close_matches(
                part, [n for n in dir(obj) if not n.startswith("_")], n=1
            )
            hint = ""
            if close:
                hint = f" (did you mean {module_name + ':' + '.'.join([*done, close[0]])!r}?)"
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}{hint}") from None
        done.append(part)
    return module, obj


def import_module(module_name: str) -> ModuleType:
    """Import `module_name` with the current directory importable (as with `python -m`).

    Raises:
        CLIError: the module (or a module it imports) is missing, or importing it raised; the
            message names the module and the exception.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CLIError(
                f"cannot import {module_name!r}: no module named {exc.name!r}"
                + _close_module(exc.name)
            ) from exc
        raise CLIError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise CLIError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc


def _close_module(missing: str) -> str:
    """` (did you mean 'x'?)` for the importable module closest to `missing`, or `""`."""
    parent, _, leaf = missing.rpartition(".")
    try:
        if parent:
            path = getattr(importlib.import_module(parent), "__path__", None)
            if path is None:
                return ""
            names = [m.name for m in pkgutil.iter_modules(path)]
        else:
            names = [m.name for m in pkgutil.iter_modules()]
    except Exception:  # a hint is best-effort: never hide the real error behind another
        return ""
    close = difflib.get_close_matches(leaf, names, n=1)
    if not close:
        return ""
    return f" (did you mean {'.'.join([*parent.split('.'), close[0]]).lstrip('.')!r}?)"


def connection_from_url(
    url: str, results_url: str | None = None, state_url: str | None = None
) -> Connection:
    """A connection for a broker URL, with a results bucket where one can be had.

    - `memory://`: the in-memory broker and results bucket (one process only).
    - `sqlite:///relative.db` / `sqlite:////absolute.db`: `SqliteMessageBroker` and
      `SqliteBucketBroker` for results, in that one file (every process on the machine that
      opens it shares its queues; no server).
    - `redis://...` / `rediss://...`: `RedisMessageBroker`, and `RedisBucketBroker` for results
      on the same server.
    - `amqp://...` / `amqps://...`: `RabbitMessageBroker`.
    - `kafka://[user:password@]host:port[,host:port...]`: `KafkaMessageBroker` with those
      bootstrap servers (and SASL credentials, see `kafka_options`).
    - `nats://...` / `tls://...`: `NatsMessageBroker`, and `NatsBucketBroker` for results on
      the same server (JetStream key-value).
    - `postgresql://...` / `postgres://...`: `PostgresMessageBroker`, and
      `PostgresBucketBroker` for results in the same database (schema `repid`).

    Args:
        url: The broker URL.
        results_url: A `redis://` URL for the results bucket of a broker that has none of its
            own (RabbitMQ, Kafka); the Redis broker's own server is used when omitted.
        state_url: A `redis://` URL of the `RedisSharedState` of a RabbitMQ or Kafka broker
            (unique ids, cancellations, limits and live workers shared by every process); a
            `prefix` query parameter sets its key prefix (`redis://host/0?prefix=app:`).

    Raises:
        CLIError: An unknown scheme, a state URL for a broker that takes none, or the broker's
            client library is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    if state_url is not None:
        if urlsplit(state_url).scheme.lower() not in {"redis", "rediss"}:
            raise CLIError(f"state URL {mask_url(state_url)!r}: expected redis:// or rediss://")
        if scheme not in {"amqp", "amqps", "kafka"}:
            raise CLIError(
                f"a state URL is for amqp:// and kafka:// brokers; {scheme}:// has its own"
            )
    if scheme == "memory":
        return Connection(
            InMemoryMessageBroker(),
            results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
        )
    if scheme == "sqlite":
        return _sqlite_connection(url, results_url)
    if scheme not in _NETWORK_SCHEMES:
        raise CLIError(
            f"unknown broker URL {mask_url(url)!r}: expected memory://, sqlite://, redis://, "
            "rediss://, amqp://, amqps://, kafka://, nats://, tls:// or postgresql://"
        )
    if results_url is not None and urlsplit(results_url).scheme.lower() not in {"redis", "rediss"}:
        raise CLIError(f"results URL {mask_url(results_url)!r}: expected redis:// or rediss://")
    name, extra = _NETWORK_SCHEMES[scheme]
    try:
        from repid import brokers

        if scheme in {"redis", "rediss"}:
            return Connection(
                brokers.RedisMessageBroker(url),
                results_bucket_broker=brokers.RedisBucketBroker(
                    results_url or url, use_result_bucket=True
                ),
            )
        if scheme in {"postgresql", "postgres"}:
            from repid.brokers.postgres import PostgresBucketBroker, PostgresMessageBroker

            return Connection(
                PostgresMessageBroker(url),
                results_bucket_broker=PostgresBucketBroker(url, use_result_bucket=True),
            )
        if scheme in {"nats", "tls"}:
            return Connection(
                brokers.NatsMessageBroker(url),
                results_bucket_broker=brokers.NatsBucketBroker(url, use_result_bucket=True),
            )
        state = None if state_url is None else _shared_state(state_url)
        if scheme in {"amqp", "amqps"}:
            message_broker: Any = brokers.RabbitMessageBroker(url, shared_state=state)
        else:
            servers, client_options = kafka_options(url)
            message_broker = brokers.KafkaMessageBroker(
                servers, client_options=client_options, shared_state=state
            )
        results = (
            None
            if results_url is None
            else brokers.RedisBucketBroker(results_url, use_result_bucket=True)
        )
        return Connection(message_broker, results_bucket_broker=results)
    except ImportError as exc:
        raise CLIError(
            f"{scheme}:// needs the {name} client: pip install 'repid[{extra}]' ({exc})"
        ) from exc


def _sqlite_connection(url: str, results_url: str | None) -> Connection:
    from repid.brokers.sqlite import SqliteBucketBroker, SqliteMessageBroker

    if results_url is not None:
        raise CLIError("sqlite:// brokers keep results in their own file: drop --results")
    try:
        return Connection(
            SqliteMessageBroker(url),
            results_bucket_broker=SqliteBucketBroker(url, use_result_bucket=True),
        )
    except RepidError as exc:
        raise CLIError(f"broker URL {mask_url(url)!r}: {exc}") from exc


_KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_KAFKA_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_options(url: str) -> tuple[str, dict[str, Any]]:
    """The bootstrap servers (`host:port,...`) and aiokafka client options of a `kafka://` URL.

    `kafka://user:password@host:9092,host2:9092` authenticates with SASL (`PLAIN` over
    `SASL_PLAINTEXT` unless the query says otherwise: `?sasl_mechanism=SCRAM-SHA-256`,
    `?security_protocol=SASL_SSL`); user and password may be percent-encoded. Without user
    info the options are empty (no authentication).

    Raises:
        CLIError: no host, a user without a password, or an unknown SASL mechanism or security
            protocol. The message never contains the password.
    """
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    servers = [host.strip() for host in hosts.split(",") if host.strip()]
    if not servers:
        raise CLIError(f"broker URL {mask_url(url)!r}: expected kafka://host:port[,host:port]")
    if not at:
        return ",".join(servers), {}
    user, colon, password = userinfo.partition(":")
    if not user or not colon:  # not echoed: a lone user info may well be a token
        raise CLIError("kafka:// URL: Kafka credentials are user:password@ (SASL)")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    mechanism = query.get("sasl_mechanism", "PLAIN").upper()
    protocol = query.get("security_protocol", "SASL_PLAINTEXT").upper()
    if mechanism not in _KAFKA_SASL_MECHANISMS:
        raise CLIError(
            f"broker URL {mask_url(url)!r}: sasl_mechanism must be one of "
            f"{', '.join(_KAFKA_SASL_MECHANISMS)}"
        )
    if protocol not in _KAFKA_PROTOCOLS:
        raise CLIError(
            f"broker URL {mask_url(url)!r}: with credentials, security_protocol must be "
            f"{' or '.join(_KAFKA_PROTOCOLS)}"
        )
    options: dict[str, Any] = {
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": unquote(user),
        "sasl_plain_password": unquote(password),
    }
    if protocol == "SASL_SSL":
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context()
    return ",".join(servers), options


def _shared_state(state_url: str) -> Any:
    from repid.state.redis import RedisSharedState

    prefix = parse_qs(urlsplit(state_url).query).get("prefix")
    if prefix:
        return RedisSharedState(state_url, prefix=prefix[0])
    return RedisSharedState(state_url)


def load_app(spec: str) -> Repid:
    """Import `module:attr` naming a `Repid` app."""
    _, obj = import_object(spec)
    if not isinstance(obj, Repid):
        raise CLIError(f"--app {spec!r} is a {type(obj).__name__}, not a Repid app")
    return obj


@dataclass
class Target:
    """What a `module:attr` resolved to."""

    routers: list[Router]
    worker: Worker | None
    """Set when the target is a `Worker`: its settings are the defaults of `repid run`."""
    connection: Connection | None
    """A connection the target carries itself (a Repid app, a Worker built with one)."""


def module_routers(module: ModuleType) -> list[Router]:
    found: list[Router] = []
    for value in vars(module).values():
        if isinstance(value, Router) and not any(value is seen for seen in found):
            found.append(value)
    return found


def module_app(module: ModuleType) -> Repid | None:
    """The one `Repid` app `module` defines (None when it defines none or several)."""
    apps = [value for value in vars(module).values() if isinstance(value, Repid)]
    unique = [app for i, app in enumerate(apps) if not any(app is a for a in apps[:i])]
    return unique[0] if len(unique) == 1 else None


async def _call_factory(factory: Callable[[], Any]) -> Any:
    result = factory()
    if inspect.isawaitable(result):
        awaitable: Awaitable[Any] = result
        result = await awaitable
    return result


async def resolve_target(
    spec: str, before_factory: Callable[[ModuleType], Awaitable[None]] | None = None
) -> tuple[ModuleType, Target]:
    """Import `spec` and turn it into routers (calling it first when it is a factory).

    Accepted: a `Worker`, a `Router`, a list or tuple of routers, a `Repid` app (its routers
    are the `Router`s defined in the same module), or a function returning one of these
    (sync or async, called with no argument inside the command's event loop). A factory is
    called after `before_factory(module)` (which opens the connection it may use).
    """
    module, obj = import_object(spec)
    if callable(obj) and not isinstance(obj, Router | Repid | type):
        if before_factory is not None:
            await before_factory(module)
        try:
            obj = await _call_factory(obj)
        except RepidError:
            raise
        except Exception as exc:
            raise CLIError(f"factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    return module, target_of(spec, module, obj)


def target_of(spec: str, module: ModuleType, obj: Any) -> Target:
    """What `obj` (found by `spec` in `module`, a factory already called) stands for."""
    if isinstance(obj, Worker):
        return Target([obj], obj, obj.bound_connection)
    if isinstance(obj, Router):
        return Target([obj], None, None)
    if isinstance(obj, list | tuple) and obj and all(isinstance(r, Router) for r in obj):
        return Target(list(obj), None, None)
    if isinstance(obj, Repid):
        routers = module_routers(module)
        if not routers:
            raise CLIError(
                f"{spec!r} is a Repid app but module {module.__name__!r} defines no Router; "
                "point at the router instead ('module:router')"
            )
        return Target(routers, None, obj.connection)
    raise CLIError(
        f"{spec!r} is a {type(obj).__name__}; expected a Worker, a Router, a list of routers, "
        "a Repid app or a function returning one"
    )


def resolve_connection(
    module: ModuleType,
    target: Target,
    *,
    explicit: Connection | None,
) -> Connection:
    """The connection to use, in order: `--app`/`--broker`, the target's own, the single
    `Repid` app of the target's module, the default (magic) connection."""
    if explicit is not None:
        return explicit
    if target.connection is not None:
        return target.connection
    app = module_app(module)
    if app is not None:
        return app.connection
    try:
        return Repid.get_magic_connection()
    except ValueError:
        raise CLIError(
            "no connection: pass --app module:app or --broker URL, "
            f"or define one Repid app in {module.__name__!r}"
        ) from None
