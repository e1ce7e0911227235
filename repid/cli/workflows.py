"""`repid workflows list|show|signal`: the workflows kept in the connection's store, one
workflow's DAG with each step's state and timings, and sending a signal to a WAIT step."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from repid.cli.options import TARGET_HELP, add_connection_options, positive_int
from repid.cli.session import connect

__all__ = ["add_parser", "command_workflows", "render"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid workflows` and its three actions."""
    parser = subparsers.add_parser(
        "workflows",
        help="list workflows, show one's steps, send a signal",
        description="Inspect workflows and signal their WAIT steps.",
    )
    parser.set_defaults(handler=command_workflows)
    actions = parser.add_subparsers(dest="workflows_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the workflows kept, newest first")
    listing.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    listing.add_argument("--limit", type=positive_int, default=20, help="at most this many")
    show = actions.add_parser("show", help="one workflow's DAG with each step's state")
    show.add_argument("id_", metavar="ID")
    show.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    signal = actions.add_parser("signal", help="send a named signal (with JSON data)")
    signal.add_argument("id_", metavar="ID")
    signal.add_argument("name", metavar="NAME")
    signal.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    signal.add_argument("--data", default="null", help="the signal's data, as JSON")
    for sub in (listing, show, signal):
        add_connection_options(sub)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S.%f")[:-3]


def render(status: object) -> str:
    """The text `repid workflows show` prints for a `WorkflowStatus`."""
    from repid.workflows import WorkflowStatus

    assert isinstance(status, WorkflowStatus)
    lines = [f"workflow {status.id_} ({status.name}): {status.state}"]
    width = max(len(name) for name in status.steps)
    for step in status.steps.values():
        took = (
            f"{step.finished - step.started:.3f}s"
            if step.started is not None and step.finished is not None
            else "-"
        )
        after = ", ".join(step.after) or "-"
        lines.append(
            f"  {step.name:<{width}}  {step.status:<9}  after: {after:<20}  "
            f"queued {_when(step.queued)}  finished {_when(step.finished)}  ran {took}"
            + (f"  error: {step.error[:200]}" if step.error else "")
        )
    return "\n".join(lines)


async def command_workflows(args: argparse.Namespace) -> int:
    """List workflows, show one, or signal one."""
    from repid.workflows import WorkflowHandle, WorkflowNotFoundError
    from repid.workflows.stores import store_for

    _, connection = await connect(args)
    if args.workflows_command == "list":
        ids = await store_for(connection).list_ids(args.limit)
        for wf_id in ids:
            try:
                status = await WorkflowHandle(wf_id, connection).status()
            except WorkflowNotFoundError:
                continue
            done = sum(s.status == "succeeded" for s in status.steps.values())
            print(
                f"{wf_id}  {status.name}  {status.state}  {done}/{len(status.steps)} steps  "
                f"{_when(status.created)}"
            )
        print(f"{len(ids)} workflow(s)", file=sys.stderr)
        return 0
    handle = WorkflowHandle(args.id_, connection)
    try:
        if args.workflows_command == "show":
            print(render(await handle.status()))
            return 0
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            print(f"--data is not JSON: {exc}", file=sys.stderr)
            return 2
        await handle.status()  # unknown ids are an error, not a silent no-op
        await handle.signal(args.name, data)
        print(f"signal {args.name!r} sent to workflow {args.id_}")
        return 0
    except WorkflowNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 1
