"""The `repid` command: run workers, describe actors as AsyncAPI, inspect and repair queues.

`main(argv)` is the console script (`repid.cli.app`). Each subcommand lives in its own module
(`run`, `describe`, `queues`, `dead`, `enqueue`), a thin layer over `repid.cli.operations`,
`repid.cli.supervisor` or `repid.asyncapi`; `options` and `session` hold what they share, and
`combine` merges the several targets and scanned packages of `repid run`.

To add a subcommand: write `repid/cli/<name>.py` with `add_parser(subparsers)`, which adds its
parser(s) and binds each to a handler with `parser.set_defaults(handler=...)`, and append the
module to `SUBCOMMANDS` in `repid/cli/app.py`, the one registration point. An `async` handler
is a one-shot command (its connections, opened through `repid.cli.session`, are closed after
it); a plain function owns the process (its event loop, signals) and shows client libraries'
logs, as `run` does. A handler returns the exit status. See `docs/cli.md`.
"""

from __future__ import annotations

from repid.cli.app import SUBCOMMANDS, build_parser, main
from repid.cli.run import build_worker
from repid.cli.run import child_command as _child_command  # noqa: F401 (tests use it)
from repid.cli.run import child_env as _child_env  # noqa: F401 (tests use it)
from repid.cli.target import CLIError

__all__ = ["SUBCOMMANDS", "CLIError", "build_parser", "build_worker", "main"]
