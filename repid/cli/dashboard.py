"""`repid dashboard`: serve the web dashboard (repid.dashboard) with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from repid.cli.options import add_connection_options
from repid.cli.session import explicit_connection
from repid.cli.target import CLIError

__all__ = ["add_parser", "command_dashboard"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid dashboard`."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard",
        description="Serve the web dashboard: queues and their counts, dead letters (requeue, "
        "delete, purge), live workers, job results. Authentication: REPID_DASHBOARD_TOKEN, or "
        "REPID_DASHBOARD_USER and REPID_DASHBOARD_PASSWORD (HTTP basic).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--read-only", action="store_true", help="no actions: look only")
    parser.add_argument(
        "--queue",
        dest="queues",
        action="append",
        metavar="NAME",
        help="a queue to show even before the broker lists it (repeatable)",
    )
    parser.add_argument("--root-path", default="", help="URL prefix behind a reverse proxy")
    add_connection_options(parser)
    parser.set_defaults(handler=command_dashboard)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def command_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted."""
    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount

        from repid.asgi import repid_lifespan
        from repid.dashboard import auth_from_env, create_app
    except ImportError as exc:
        raise CLIError(
            f"the dashboard needs its extra: pip install 'repid[dashboard]' ({exc.name})"
        ) from exc
    connection = explicit_connection(args)
    if connection is None:
        raise CLIError("repid dashboard needs --broker URL (or --app MODULE:APP)")
    auth = auth_from_env()
    if auth is None and not _loopback(args.host):
        print(
            f"warning: serving on {args.host} without authentication; set "
            "REPID_DASHBOARD_TOKEN (or REPID_DASHBOARD_USER/PASSWORD)",
            file=sys.stderr,
        )
    dashboard = create_app(
        connection, auth=auth, read_only=args.read_only, queues=args.queues or []
    )
    app = Starlette(routes=[Mount("/", dashboard)], lifespan=repid_lifespan(connection))
    print(
        f"repid dashboard on http://{args.host}:{args.port}{args.root_path}/"
        + (" (read-only)" if args.read_only else ""),
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, root_path=args.root_path, log_level="warning")
    return 0
