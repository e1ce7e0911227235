"""AsyncAPI 3.0 description of the actors of one or more routers.

Each queue is a channel, each actor a `receive` operation on its queue's channel, and each actor's
message payload is the JSON object of its keyword arguments, described by pydantic.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter

from repid.errors import ConfigurationError
from repid.router import ActorData, Router

__all__ = ["ASYNCAPI_VERSION", "build_asyncapi"]

ASYNCAPI_VERSION = "3.0.0"

_ANY_ARGUMENTS: dict[str, Any] = {
    "type": "object",
    "description": "Keyword arguments of the actor (not validated by repid).",
}


def _arguments_adapter(actor: ActorData) -> TypeAdapter[Any] | None:
    """The pydantic validator of the actor's arguments, or None for unvalidated converters."""
    converter = actor.converter
    prepare = getattr(converter, "prepare", None)
    if prepare is not None:
        try:
            prepare()
        except ConfigurationError as exc:
            raise ConfigurationError(f"actor {actor.name!r}: {exc}") from exc
    adapter = getattr(converter, "adapter", None)
    return adapter if isinstance(adapter, TypeAdapter) else None


def _summary(actor: ActorData) -> str | None:
    doc = inspect.getdoc(actor.fn)
    if not doc:
        return None
    return doc.strip().splitlines()[0].strip() or None


def _collect_actors(routers: Router | Iterable[Router]) -> dict[str, ActorData]:
    actors: dict[str, ActorData] = {}
    for router in [routers] if isinstance(routers, Router) else routers:
        actors.update(router.actors)  # later routers win, as in `Router.include_router`
    return dict(sorted(actors.items()))


def build_asyncapi(
    routers: Router | Iterable[Router],
    *,
    title: str = "repid application",
    version: str = "1.0.0",
    description: str | None = None,
) -> dict[str, Any]:
    """Build an AsyncAPI 3.0 document (as a JSON-ready dict) describing the actors of `routers`.

    Args:
        routers: a router (a `Worker` is one) or several; an actor name seen twice keeps the last.
        title: `info.title` of the document.
        version: `info.version`: the version of your application, not of AsyncAPI.
        description: `info.description`.

    Raises:
        ConfigurationError: an actor's type hints cannot be resolved or turned into a schema.
    """
    actors = _collect_actors(routers)
    adapters: list[tuple[str, Any, TypeAdapter[Any]]] = []
    for actor in actors.values():
        adapter = _arguments_adapter(actor)
        if adapter is not None:
            adapters.append((actor.name, "validation", adapter))
    try:
        payloads, definitions = TypeAdapter.json_schemas(
            adapters, ref_template="#/components/schemas/{model}"
        )
    except Exception as exc:  # pydantic raises several error types for un-schemable hints
        raise ConfigurationError(f"cannot build the JSON schema of the actors: {exc}") from exc
    schemas: dict[str, Any] = definitions.get("$defs", {})

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for actor in actors.values():
        payload = payloads.get((actor.name, "validation"), _ANY_ARGUMENTS)
        message: dict[str, Any] = {
            "name": actor.name,
            "title": actor.name,
            "contentType": "application/json",
            "payload": payload,
        }
        summary = _summary(actor)
        if summary is not None:
            message["summary"] = summary
        messages[actor.name] = message

        channel = channels.setdefault(
            actor.queue,
            {
                "address": actor.queue,
                "title": actor.queue,
                "description": f"repid queue {actor.queue!r}.",
                "messages": {},
            },
        )
        channel["messages"][actor.name] = {"$ref": f"#/components/messages/{actor.name}"}

        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{actor.queue}"},
            "messages": [{"$ref": f"#/channels/{actor.queue}/messages/{actor.name}"}],
            "title": actor.name,
        }
        if summary is not None:
            operation["summary"] = summary
        operations[actor.name] = operation

    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": "application/json",
        "channels": dict(sorted(channels.items())),
        "operations": operations,
        "components": {"messages": messages},
    }
    if schemas:
        document["components"]["schemas"] = dict(sorted(schemas.items()))
    return document
