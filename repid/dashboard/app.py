"""`create_app`: the dashboard as a Starlette (ASGI) application over one repid `Connection`.

Mount it in FastAPI/Starlette (`app.mount("/repid", create_app(conn))`) or serve it with
`repid dashboard`. Every broker call has a deadline; a failing one gives a 503 banner page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from repid._redact import mask_urls
from repid.cli.operations import DeadFilter, purge_dead, queue_sizes, requeue_dead
from repid.connection import Connection
from repid.dashboard import pages
from repid.dashboard.data import PARTS, find_message, job_result, load_overview, message_page
from repid.dashboard.security import (
    AUTH_COOKIE,
    CSRF_COOKIE,
    Auth,
    BasicAuth,
    TokenAuth,
    csrf_ok,
    new_csrf_token,
)
from repid.errors import RepidError
from repid.job import cancel_job
from repid.lifecycle import JobNotFoundError

__all__ = ["create_app"]

logger = logging.getLogger("repid.dashboard")

STATIC = Path(__file__).parent / "static"
MAX_FORM_BYTES = 16_384
Handler = Callable[[Request], Awaitable[Response]]


class _RefusedError(Exception):
    """A request refused with a status and a message (shown in the banner)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Dashboard:
    """The request handlers, sharing the connection and the settings."""

    def __init__(
        self,
        connection: Connection,
        *,
        auth: Auth | None,
        read_only: bool,
        page_size: int,
        broker_timeout: float,
        queues: list[str],
    ) -> None:
        self.connection = connection
        self.auth = auth
        self.read_only = read_only
        self.page_size = page_size
        self.broker_timeout = broker_timeout
        self.queues = queues

    # --- plumbing ---------------------------------------------------------------------------

    async def call(self, awaitable: Awaitable[Any]) -> Any:
        """A broker call with the dashboard's deadline."""
        async with asyncio.timeout(self.broker_timeout):
            return await awaitable

    def guard(self, handler: Handler, *, action: bool = False, api: bool = False) -> Handler:
        """`handler` behind authentication, CSRF (for actions) and the broker error banner."""

        async def wrapped(request: Request) -> Response:
            root = request.scope.get("root_path", "")
            csrf = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
            request.state.csrf = csrf
            try:
                if self.auth is not None and not self.auth.allows(request.headers, request.cookies):
                    return self.refuse_auth(request, api=api)
                if action:
                    if self.read_only:
                        raise _RefusedError(403, "the dashboard is read-only: actions are off")
                    form = await self.form(request)
                    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
                        raise _RefusedError(403, "missing or invalid CSRF token: reload the page")
                    request.state.form = form
                response = await handler(request)
            except _RefusedError as exc:
                response = self.error(request, exc.status, "Refused", str(exc), api=api)
            except Exception as exc:  # a broken broker: a banner, never a traceback
                logger.warning("dashboard: broker call failed: %s", mask_urls(repr(exc)))
                text = mask_urls(str(exc)) or "no answer in time"
                message = f"The broker did not answer: {type(exc).__name__}: {text}"
                response = self.error(request, 503, "Broker unavailable", message, api=api)
            if CSRF_COOKIE not in request.cookies:
                response.set_cookie(
                    CSRF_COOKIE, csrf, httponly=True, samesite="strict", path=root or "/"
                )
            response.headers.setdefault("cache-control", "no-store")
            response.headers.setdefault("x-frame-options", "DENY")
            response.headers.setdefault("x-content-type-options", "nosniff")
            return response

        return wrapped

    def error(
        self, request: Request, status: int, title: str, message: str, *, api: bool
    ) -> Response:
        if api:
            return JSONResponse({"error": mask_urls(message)}, status_code=status)
        root = request.scope.get("root_path", "")
        return HTMLResponse(pages.error_page(root, title, message), status_code=status)

    def refuse_auth(self, request: Request, *, api: bool) -> Response:
        if isinstance(self.auth, BasicAuth):
            return Response(
                "authentication required",
                status_code=401,
                headers={"www-authenticate": 'Basic realm="repid dashboard"'},
            )
        if api or request.method != "GET":
            return JSONResponse({"error": "authentication required"}, status_code=401)
        root = request.scope.get("root_path", "")
        return HTMLResponse(pages.login_page(root, failed=False), status_code=401)

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise _RefusedError(413, "form too large")
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {key: values[0] for key, values in parsed.items()}

    def html(self, text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status)

    # --- pages ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        data = await self.call(load_overview(self.connection, self.queues))
        root = request.scope.get("root_path", "")
        return self.html(pages.overview_page(root, data, read_only=self.read_only))

    async def overview_json(self, request: Request) -> Response:
        data = await self.call(load_overview(self.connection, self.queues))
        return JSONResponse(
            {
                "queues": [asdict(q) for q in data.queues],
                "workers": None if data.workers is None else len(data.workers),
            }
        )

    async def workers(self, request: Request) -> Response:
        data = await self.call(load_overview(self.connection, self.queues))
        root = request.scope.get("root_path", "")
        return self.html(pages.workers_page(root, data.workers, read_only=self.read_only))

    async def _sizes(self, queue: str) -> Any:
        sizes = await self.call(queue_sizes(self.connection, [queue]))
        found = [s for s in sizes if s.name == queue]
        if not found or not found[0].declared:
            raise _RefusedError(404, f"queue {queue!r} is not declared on the broker")
        return found[0]

    async def queue(self, request: Request) -> Response:
        name = request.path_params["queue"]
        part = request.query_params.get("part", "dead")
        if part not in PARTS:
            raise _RefusedError(400, f"unknown part {part!r}: delayed or dead")
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            raise _RefusedError(400, "offset must be an integer") from None
        search = request.query_params.get("q", "").strip()
        sizes = await self._sizes(name)
        page = await self.call(
            message_page(
                self.connection,
                name,
                part,
                offset=offset,
                limit=self.page_size,
                search=search or None,
            )
        )
        root = request.scope.get("root_path", "")
        text = pages.queue_page(
            root,
            sizes,
            part,
            page,
            offset=offset,
            limit=self.page_size,
            search=search,
            csrf=request.state.csrf,
            read_only=self.read_only,
        )
        return self.html(text)

    async def message(self, request: Request) -> Response:
        name, part, id_ = (request.path_params[k] for k in ("queue", "part", "id"))
        if part not in PARTS:
            raise _RefusedError(404, f"unknown part {part!r}")
        row = await self.call(find_message(self.connection, name, part, id_))
        if row is None:
            raise _RefusedError(404, f"no message {id_!r} in the {part} part of {name!r}")
        root = request.scope.get("root_path", "")
        text = pages.message_detail(
            root, name, part, row, csrf=request.state.csrf, read_only=self.read_only
        )
        return self.html(text)

    async def job(self, request: Request) -> Response:
        id_ = request.query_params.get("id", "").strip()
        queue = request.query_params.get("queue", "").strip()
        bucket = await self.call(job_result(self.connection, id_)) if id_ else None
        root = request.scope.get("root_path", "")
        text = pages.job_page(
            root,
            id_,
            queue,
            bucket,
            has_results=self.connection.results_bucket_broker is not None,
            csrf=request.state.csrf,
            read_only=self.read_only,
            note=request.query_params.get("note", ""),
        )
        return self.html(text)

    # --- actions ----------------------------------------------------------------------------

    def confirm(self, request: Request, question: str, back: str) -> Response | None:
        form: dict[str, str] = request.state.form
        if form.get("confirm") == "yes":
            return None
        fields = {k: v for k, v in form.items() if k not in {"csrf", "confirm"}}
        root = request.scope.get("root_path", "")
        text = pages.confirm_page(
            root, request.url.path, fields, question, request.state.csrf, back
        )
        return self.html(text)

    async def dead_action(self, request: Request) -> Response:
        name = request.path_params["queue"]
        verb = request.path_params["verb"]
        if verb not in {"requeue", "delete", "purge"}:
            raise _RefusedError(404, f"unknown action {verb!r}")
        form: dict[str, str] = request.state.form
        id_ = form.get("id") or None
        root = request.scope.get("root_path", "")
        back = f"{root}/queues/{quote(name, safe='')}?part=dead"
        if verb == "delete" and id_ is None:
            raise _RefusedError(400, "delete needs the id of one dead message")
        what = f"dead message {id_}" if id_ else f"every dead message of {name}"
        questions = {
            "requeue": f"Requeue {what} with fresh retries?",
            "delete": f"Delete {what}? It cannot be undone.",
            "purge": f"Purge {what}? It cannot be undone.",
        }
        asked = self.confirm(request, questions[verb], back)
        if asked is not None:
            return asked
        which = DeadFilter(ids=None if id_ is None else frozenset({id_}))
        run = requeue_dead if verb == "requeue" else purge_dead
        count = await self.call(run(self.connection, name, which=which))
        logger.info("dashboard: %s %d dead message(s) of %r", verb, count, name)
        return RedirectResponse(back, status_code=303)

    async def cancel(self, request: Request) -> Response:
        form: dict[str, str] = request.state.form
        id_, queue = form.get("id", ""), form.get("queue", "")
        if not id_ or not queue:
            raise _RefusedError(400, "cancel needs a job id and its queue")
        root = request.scope.get("root_path", "")
        back = f"{root}/job?id={quote(id_)}&queue={quote(queue)}"
        asked = self.confirm(request, f"Cancel job {id_} of queue {queue}?", back)
        if asked is not None:
            return asked
        try:
            outcome = await self.call(cancel_job(self.connection, queue, id_))
            note = f"cancel: {outcome.value}"
        except JobNotFoundError as exc:
            note = str(exc)
        except RepidError as exc:
            raise _RefusedError(409, str(exc)) from exc
        return RedirectResponse(f"{back}&note={quote(note)}", status_code=303)

    async def login(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        if not isinstance(self.auth, TokenAuth):
            return RedirectResponse(f"{root}/", status_code=303)
        if request.method == "GET":
            return self.html(pages.login_page(root, failed=False))
        form = await self.form(request)
        if not self.auth.check_login(form.get("token", "")):
            return self.html(pages.login_page(root, failed=True), status=401)
        response = RedirectResponse(f"{root}/", status_code=303)
        response.set_cookie(
            AUTH_COOKIE, self.auth.token, httponly=True, samesite="strict", path=root or "/"
        )
        return response


def create_app(
    connection: Connection,
    *,
    auth: Auth | None = None,
    read_only: bool = False,
    page_size: int = 50,
    broker_timeout: float = 10.0,
    queues: list[str] | None = None,
) -> Starlette:
    """The dashboard over `connection` (already connected, or connected by the app's lifespan).

    Args:
        connection: the repid connection whose broker (and results bucket) the pages read.
        auth: `TokenAuth`, `BasicAuth` or None (no authentication: keep it on 127.0.0.1);
            `repid.dashboard.auth_from_env()` reads them from the environment.
        read_only: hide and refuse every action (requeue, delete, purge, cancel).
        page_size: messages per listing page.
        broker_timeout: seconds a broker call may take before the page shows the error banner.
        queues: queues shown even when the broker does not list them yet.
    """
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    d = _Dashboard(
        connection,
        auth=auth,
        read_only=read_only,
        page_size=page_size,
        broker_timeout=broker_timeout,
        queues=list(queues or []),
    )
    routes = [
        Route("/", d.guard(d.overview)),
        Route("/api/overview", d.guard(d.overview_json, api=True)),
        Route("/workers", d.guard(d.workers)),
        Route("/job", d.guard(d.job)),
        Route("/job/cancel", d.guard(d.cancel, action=True), methods=["POST"]),
        Route("/login", d.login, methods=["GET", "POST"]),
        Route(
            "/queues/{queue}/{verb:str}",
            d.guard(d.dead_action, action=True),
            methods=["POST"],
        ),
        Route("/queues/{queue}", d.guard(d.queue)),
        Route("/queues/{queue}/{part}/{id}", d.guard(d.message)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)
