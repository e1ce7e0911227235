"""The dashboard's HTML: small functions returning escaped markup, one per page.

Every value shown passes through `esc` (or `mask_urls` first, for error texts), so neither
markup nor a DSN password of an error message reaches a page.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from repid._redact import mask_urls
from repid.cli.operations import QueueSizes
from repid.dashboard.data import MessagePage, MessageRow, Overview, truncate
from repid.data import ResultBucket
from repid.lifecycle import WorkerInfo

__all__ = [
    "confirm_page",
    "error_page",
    "job_page",
    "layout",
    "login_page",
    "message_detail",
    "overview_page",
    "queue_page",
    "workers_page",
]


def esc(value: object) -> str:
    """`value` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def layout(title: str, body: str, *, root: str, banner: str = "", read_only: bool = False) -> str:
    """The page frame: navigation, an optional error banner, the body."""
    mode = '<span class="badge">read-only</span>' if read_only else ""
    banner_html = f'<div class="banner" role="alert">{banner}</div>' if banner else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)} · repid</title>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<link rel=stylesheet href="{root}/static/dashboard.css"></head><body>'
        f'<nav><a class=brand href="{root}/">repid</a><a href="{root}/">Overview</a>'
        f'<a href="{root}/workers">Workers</a><a href="{root}/job">Job</a>{mode}</nav>'
        f"<main>{banner_html}<h1>{esc(title)}</h1>{body}</main>"
        f'<script src="{root}/static/dashboard.js"></script></body></html>'
    )


def _form(action: str, fields: dict[str, str], label: str, csrf: str, *, danger: bool) -> str:
    hidden = "".join(
        f'<input type=hidden name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items()
    )
    cls = "danger" if danger else ""
    return (
        f'<form method=post action="{esc(action)}" class=inline>'
        f'<input type=hidden name=csrf value="{esc(csrf)}">{hidden}'
        f'<button class="{cls}" type=submit>{esc(label)}</button></form>'
    )


def _workers_table(workers: Iterable[WorkerInfo]) -> str:
    now = time.time()
    rows = "".join(
        f"<tr><td>{esc(w.id)}</td><td>{esc(w.host)}</td><td>{w.pid}</td>"
        f"<td>{esc(', '.join(w.queues))}</td><td class=num>{w.concurrency}</td>"
        f"<td class=num>{w.in_flight}</td><td>{_when(w.started_at)}</td>"
        f"<td>{max(0.0, now - w.last_seen):.0f} s ago</td></tr>"
        for w in workers
    )
    return (
        "<table class=workers><thead><tr><th>Worker</th><th>Host</th><th>PID</th><th>Queues</th>"
        "<th>Concurrency</th><th>Current jobs</th><th>Started</th><th>Last heartbeat</th>"
        f"</tr></thead><tbody>{rows or '<tr><td colspan=8>no live workers</td></tr>'}"
        "</tbody></table>"
    )


def _queue_row(root: str, q: QueueSizes) -> str:
    link = f'<a href="{root}/queues/{quote(q.name, safe="")}">{esc(q.name)}</a>'
    if not q.declared:
        return f"<tr><td>{link}</td><td colspan=4>not declared</td></tr>"
    return (
        f'<tr data-queue="{esc(q.name)}"><td>{link}</td><td class="num ready">{q.ready}</td>'
        f'<td class="num delayed">{q.delayed}</td><td class=num>{q.in_flight}</td>'
        f'<td class="num dead">{q.dead}</td></tr>'
    )


def overview_page(root: str, data: Overview, *, read_only: bool) -> str:
    """Every queue with its counts, the live chart, the live workers."""
    rows = "".join(_queue_row(root, q) for q in data.queues)
    workers = (
        "<p>This broker keeps no worker registry.</p>"
        if data.workers is None
        else _workers_table(data.workers)
    )
    body = (
        "<h2>Queues</h2><table id=queues><thead><tr><th>Queue</th><th>Ready</th>"
        "<th>Delayed</th><th>In flight</th><th>Dead</th></tr></thead>"
        f"<tbody>{rows or '<tr><td colspan=5>no queues</td></tr>'}</tbody></table>"
        "<h2>Messages per second</h2><p class=hint>Sampled every 2 s while this page is open: "
        "change per second of the ready, delayed and dead messages of all queues.</p>"
        f'<canvas id=chart width=720 height=180 data-src="{root}/api/overview"></canvas>'
        f"<h2>Live workers</h2>{workers}"
    )
    return layout("Overview", body, root=root, read_only=read_only)


def _message_rows(root: str, queue: str, part: str, rows: list[MessageRow]) -> str:
    out = []
    for row in rows:
        href = f"{root}/queues/{quote(queue, safe='')}/{part}/{quote(row.id_, safe='')}"
        dead = (
            f"<td>{esc(row.reason or '')}</td><td>{esc(row.error_type or '')}</td>"
            if part == "dead"
            else ""
        )
        out.append(
            f'<tr><td><a class=msg href="{href}">{esc(row.id_)}</a></td><td>{esc(row.actor)}</td>'
            f"<td class=num>{row.attempts}</td>{dead}"
            f"<td><code>{esc(truncate(row.payload))}</code></td></tr>"
        )
    return "".join(out)


def queue_page(
    root: str,
    sizes: QueueSizes,
    part: str,
    page: MessagePage,
    *,
    offset: int,
    limit: int,
    search: str,
    csrf: str,
    read_only: bool,
) -> str:
    """One queue: its counts, one page of a part's messages, search, and the actions."""
    qpath = f"{root}/queues/{quote(sizes.name, safe='')}"
    tabs = "".join(
        f'<a class="tab{" on" if p == part else ""}" href="{qpath}?part={p}">{p} '
        f"({getattr(sizes, p)})</a>"
        for p in ("delayed", "dead")
    )
    counts = (
        f"<p class=counts>ready <b id=ready>{sizes.ready}</b> · delayed <b id=delayed>"
        f"{sizes.delayed}</b> · in flight <b>{sizes.in_flight}</b> · dead <b id=dead>"
        f"{sizes.dead}</b></p>"
    )
    search_form = (
        f'<form method=get action="{qpath}" class=search><input type=hidden name=part '
        f'value="{esc(part)}"><input name=q placeholder="job id" value="{esc(search)}">'
        "<button type=submit>Search</button></form>"
    )
    actions = ""
    if not read_only and part == "dead":
        actions = (
            "<div class=actions>"
            + _form(f"{qpath}/requeue", {}, "Requeue all dead", csrf, danger=False)
            + _form(f"{qpath}/purge", {}, "Purge dead", csrf, danger=True)
            + "</div>"
        )
    dead_cols = "<th>Reason</th><th>Error</th>" if part == "dead" else ""
    table = (
        f"<table id=messages><thead><tr><th>Job id</th><th>Actor</th><th>Attempts</th>"
        f"{dead_cols}<th>Payload</th></tr></thead><tbody>"
        f"{_message_rows(root, sizes.name, part, page.rows) or '<tr><td colspan=6>empty</td></tr>'}"
        "</tbody></table>"
    )
    nav = []
    base = {"part": part, **({"q": search} if search else {})}
    if offset > 0:
        prev = urlencode({**base, "offset": max(0, offset - limit)})
        nav.append(f'<a href="{qpath}?{prev}">← previous</a>')
    if page.has_more:
        nxt = urlencode({**base, "offset": offset + limit})
        nav.append(f'<a href="{qpath}?{nxt}">next →</a>')
    paging = f"<p class=paging>{' '.join(nav)}</p>" if nav else ""
    body = (
        f"{counts}<p class=hint>Ready messages are counted, not listed (listing would lease "
        f"them away from the workers).</p><div class=tabs>{tabs}</div>{search_form}{actions}"
        f"{table}{paging}"
    )
    return layout(f"Queue {sizes.name}", body, root=root, read_only=read_only)


def message_detail(
    root: str, queue: str, part: str, row: MessageRow, *, csrf: str, read_only: bool
) -> str:
    """One message: payload, and for a dead letter its reason, error, traceback, attempts."""
    qpath = f"{root}/queues/{quote(queue, safe='')}"
    items = [
        ("Job id", esc(row.id_)),
        ("Actor", esc(row.actor)),
        ("Queue", f'<a href="{qpath}?part={part}">{esc(queue)}</a>'),
        ("Part", esc(part)),
        ("Attempts", str(row.attempts)),
    ]
    if row.result_id:
        link = f"{root}/job?{urlencode({'id': row.result_id, 'queue': queue})}"
        items.append(("Result id", f'<a href="{esc(link)}">{esc(row.result_id)}</a>'))
    if part == "dead":
        items += [
            ("Reason", f"<span id=reason>{esc(row.reason or 'unknown')}</span>"),
            ("Error type", esc(row.error_type or "-")),
            ("Error message", esc(mask_urls(row.error_message or "-"))),
            ("Dead since", _when(row.dead_at)),
        ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    body = f"<dl>{dl}</dl><h2>Payload</h2><pre>{esc(row.payload)}</pre>"
    if row.traceback:
        body += f"<h2>Traceback</h2><pre class=traceback>{esc(mask_urls(row.traceback))}</pre>"
    if part == "dead" and not read_only:
        fields = {"id": row.id_}
        body += (
            "<div class=actions>"
            + _form(f"{qpath}/requeue", fields, "Requeue", csrf, danger=False)
            + _form(f"{qpath}/delete", fields, "Delete", csrf, danger=True)
            + "</div>"
        )
    return layout(f"Message {row.id_}", body, root=root, read_only=read_only)


def job_page(
    root: str,
    id_: str,
    queue: str,
    bucket: ResultBucket | None,
    *,
    has_results: bool,
    csrf: str,
    read_only: bool,
    note: str = "",
) -> str:
    """A job's stored result (or error) by result id, and a cancel action."""
    form = (
        f'<form method=get action="{root}/job" class=search><input name=id placeholder='
        f'"result id" value="{esc(id_)}"><input name=queue placeholder=queue value="{esc(queue)}">'
        "<button type=submit>Look up</button></form>"
    )
    body = form + (f"<p class=note>{esc(note)}</p>" if note else "")
    if id_:
        if not has_results:
            body += "<p>This connection has no results bucket: results cannot be shown.</p>"
        elif bucket is None:
            body += (
                f"<p>State: <b id=state>no result stored</b> for {esc(id_)} (pending, running, "
                "not stored, or expired).</p>"
            )
        else:
            state = "succeeded" if bucket.success else "failed"
            took = (bucket.finished_when - bucket.started_when) / 1e9
            items = [
                ("State", f"<b id=state>{state}</b>"),
                ("Started", _when(bucket.started_when / 1e9)),
                ("Finished", _when(bucket.finished_when / 1e9)),
                ("Duration", f"{took:.3f} s"),
            ]
            if not bucket.success:
                items.append(("Error type", esc(bucket.exception or "-")))
            dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
            label = "Result" if bucket.success else "Error"
            body += f"<dl>{dl}</dl><h2>{label}</h2><pre>{esc(mask_urls(bucket.data))}</pre>"
            if bucket.traceback:
                body += f"<h2>Traceback</h2><pre>{esc(mask_urls(bucket.traceback))}</pre>"
        if queue and not read_only:
            body += (
                "<div class=actions>"
                + _form(
                    f"{root}/job/cancel",
                    {"id": id_, "queue": queue},
                    "Cancel job",
                    csrf,
                    danger=True,
                )
                + "</div>"
            )
    return layout("Job", body, root=root, read_only=read_only)


def workers_page(root: str, workers: list[WorkerInfo] | None, *, read_only: bool) -> str:
    """The live workers: queues, concurrency, current jobs, last heartbeat."""
    body = (
        "<p>This broker keeps no worker registry.</p>"
        if workers is None
        else _workers_table(workers)
    )
    return layout("Workers", body, root=root, read_only=read_only)


def confirm_page(
    root: str, action: str, fields: dict[str, str], question: str, csrf: str, back: str
) -> str:
    """The confirmation step of an action: the same POST again, with `confirm=yes`."""
    form = _form(action, {**fields, "confirm": "yes"}, "Yes, do it", csrf, danger=True)
    body = f"<p class=question>{esc(question)}</p><div class=actions>{form}"
    body += f'<a class=button href="{esc(back)}">Cancel</a></div>'
    return layout("Confirm", body, root=root)


def error_page(root: str, title: str, message: str) -> str:
    """A page with only the error banner (a broken broker, a refused request)."""
    return layout(title, "", root=root, banner=esc(mask_urls(message)))


def login_page(root: str, *, failed: bool) -> str:
    """The token login form (it sets the `repid_token` cookie)."""
    note = "<p class=banner>Wrong token.</p>" if failed else ""
    body = (
        f'{note}<form method=post action="{root}/login"><label>Token '
        "<input type=password name=token autocomplete=current-password></label>"
        "<button type=submit>Log in</button></form>"
    )
    return layout("Log in", body, root=root)
