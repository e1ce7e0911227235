"""Argument types and option groups shared by the subcommands' parsers."""

from __future__ import annotations

import argparse
import os

__all__ = [
    "TARGET_HELP",
    "URL_ENV",
    "add_connection_options",
    "add_target",
    "duration",
    "non_negative_float",
    "positive_int",
    "queue_list",
    "target_from_app",
]

TARGET_HELP = (
    "module:attr naming a Worker, a Router, a list of routers, a Repid app (its module's routers "
    "are used) or a function returning one of these"
)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a number of seconds >= 0 (nan rejected)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration(text: str) -> float:
    """An argparse type: a duration > 0 in seconds: `90`, `90s`, `30m`, `12h`, `7d`, `2w`."""
    number, unit = (text[:-1], text[-1]) if text[-1:].lower() in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit.lower()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 30m, 12h or 7d, got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def queue_list(text: str) -> list[str]:
    """An argparse type: comma-separated queue names, at least one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated queue names")
    return names


URL_ENV = {
    "broker": "REPID_BROKER_URL",
    "results": "REPID_RESULTS_URL",
    "state": "REPID_STATE_URL",
}
"""The URL options and the environment variables that give their defaults (URLs carry
passwords: the environment is readable only by the same user, a command line by every user)."""

_URL_HELP = {
    "broker": "broker URL: memory://, sqlite:///file.db, redis://host:port/db, "
    "amqp://user:pass@host/vhost, kafka://host:port, nats://host:port or "
    "postgresql://user@host/db (env {env})",
    "results": "redis:// URL of the results bucket for --broker amqp:// or kafka:// "
    "(env {env}; the other brokers keep results themselves)",
    "state": "redis:// URL of the shared state for --broker amqp:// or kafka:// (unique ids, "
    "cancellations, limits, live workers across processes; ?prefix=... sets the key "
    "prefix; env {env})",
}


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """`--app`, `--broker`, `--results`, `--state`: where a command finds its connection."""
    group = parser.add_argument_group("connection (default: the target's own Repid app)")
    group.add_argument(
        "-A",
        "--app",
        metavar="MODULE:ATTR",
        help="the app: stands for TARGET when TARGET is not given; with TARGET, a Repid app "
        "whose connection to use",
    )
    for option, env in URL_ENV.items():
        group.add_argument(
            f"--{option}",
            metavar="URL",
            default=os.environ.get(env),
            help=_URL_HELP[option].format(env=env),
        )


def add_target(parser: argparse.ArgumentParser) -> None:
    """The optional positional `TARGET` (kept for 1.x command lines; `-A/--app` is the option)."""
    parser.add_argument(
        "target", metavar="TARGET", nargs="?", help=TARGET_HELP + " (or give it as -A/--app)"
    )


def target_from_app(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Make `-A/--app` the target when a command takes one and no positional TARGET was given
    (for `run`, nor `--scan`: the scanned packages are the targets, `--app` the connection)."""
    if "target" not in args or args.target not in (None, []):
        return
    if getattr(args, "scan", None):  # `run --scan PACKAGE`: the targets; --app the connection
        return
    if not getattr(args, "app", None):
        alternatives = "TARGET, or --scan PACKAGE" if "scan" in args else "TARGET"
        parser.error(
            f"{args.command}: the app is required: -A/--app MODULE:ATTR (or {alternatives})"
        )
    if isinstance(args.target, list):  # `run` takes several targets
        args.target, args.app = [args.app], None
    else:
        args.target, args.app = args.app, None
