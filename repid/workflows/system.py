"""The built-in actors of workflow system steps (a timed WAIT, an HTTP call), on one router a
worker includes with `router.include_router(workflow_router())`."""

from __future__ import annotations

from typing import Any

from repid._redact import mask_url
from repid.errors import RepidError
from repid.retry_policy import RetryPolicyT
from repid.router import Router
from repid.workflows.model import HTTP_ACTOR, WAIT_ACTOR

__all__ = ["HttpStepError", "workflow_router"]


class HttpStepError(RepidError):
    """An HTTP step got a 5xx answer (the attempt fails and is retried by the step's retries)."""


async def _wait() -> None:
    """A timed WAIT step: enqueued deferred by its duration, it only has to finish."""


async def _http(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Call `url`; connection errors and 5xx fail the attempt, any other answer is the output:
    `status`, `headers` and `json` (a JSON body) or `text`."""
    import httpx  # repid[http]

    content: dict[str, Any] = {}
    if isinstance(body, str | bytes):
        content["content"] = body
    elif body is not None:
        content["json"] = body
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            response = await client.request(method, url, headers=headers, **content)
        except httpx.TransportError as exc:  # no URL in the message: it may hold a password
            raise HttpStepError(f"{method} {mask_url(url)}: {type(exc).__name__}") from None
    if response.status_code >= 500:
        raise HttpStepError(f"{method} {mask_url(url)} answered {response.status_code}")
    out: dict[str, Any] = {"status": response.status_code, "headers": dict(response.headers)}
    try:
        out["json"] = response.json()
    except ValueError:
        out["text"] = response.text
    return out


def workflow_router(retry_policy: RetryPolicyT | None = None) -> Router:
    """A router with the workflows' built-in actors; include it in every worker's router.

    Args:
        retry_policy: the delay before a failed HTTP step is retried (default: repid's).
    """
    router = Router()
    router.actor(name=WAIT_ACTOR)(_wait)
    router.actor(name=HTTP_ACTOR, retry_policy=retry_policy)(_http)
    return router
