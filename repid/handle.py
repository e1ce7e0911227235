"""Typed handles on actors: `await process_order.enqueue(order_id=1)`.

`@router.actor` returns the function itself (as in repid 1.6) with `job`, `enqueue`, `send` and
`options` attached: they build a `Job` carrying the actor's name and queue, the arguments bound
against the function's signature first, so a wrong or missing keyword raises `TypeError` at the
call and nothing is sent.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from repid.job import Job

__all__ = ["ActorFunction", "ActorHandle"]

P = ParamSpec("P")
R = TypeVar("R", covariant=True)

_OPTION_BLOCKLIST = frozenset({"name", "queue", "args"})
"""`Job` parameters a handle sets itself (the actor's name and queue, the bound arguments)."""


class _Actor(Protocol):
    """What a handle needs of an actor (`repid.router.ActorData` is one)."""

    @property
    def fn(self) -> Callable[..., Any]: ...
    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def depends(self) -> dict[str, Any]: ...
    @property
    def message_params(self) -> list[str]: ...


class ActorHandle(Generic[P]):
    """Builds and sends jobs for one actor; its call signature is the actor function's.

    Reached as attributes of the decorated function (`fn.enqueue`, `fn.send`, `fn.job`,
    `fn.options`), or as `router.actors[name].handle`.

    Args:
        actor: the registered actor (its name, queue and function).
        options: further `Job` keyword arguments (`priority`, `deferred_by`, `retries`, ...).
    """

    __slots__ = ("_actor", "_options", "_signature")

    def __init__(self, actor: _Actor, options: dict[str, Any] | None = None) -> None:
        self._actor = actor
        self._options: dict[str, Any] = dict(options or {})
        injected = set(actor.depends) | set(actor.message_params)
        signature = inspect.signature(actor.fn)
        self._signature = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name not in injected]
        )

    @property
    def actor_name(self) -> str:
        """The name jobs are routed by."""
        return self._actor.name

    @property
    def queue(self) -> str:
        """The queue the actor listens on: every job of the handle goes there."""
        return self._actor.queue

    def options(self, **job_options: Any) -> ActorHandle[P]:
        """A handle whose jobs also get these `Job` keyword arguments.

        `await send_mail.options(priority=PrioritiesT.HIGH, retries=3).enqueue(to="a@b.c")`.
        `name`, `queue` and `args` are the handle's own; an unknown option raises `TypeError`
        when the job is built.
        """
        fixed = _OPTION_BLOCKLIST.intersection(job_options)
        if fixed:
            raise TypeError(
                f"actor {self._actor.name!r}: {', '.join(sorted(fixed))} cannot be set on a "
                "handle (the actor's name and queue, and the call's arguments, are used)"
            )
        return ActorHandle(self._actor, {**self._options, **job_options})

    def arguments(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """The job's keyword arguments for this call, checked against the actor's signature.

        Raises:
            TypeError: a missing, unexpected or duplicated argument (as a call would).
        """
        params = self._signature.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            named = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
            for key in kwargs:
                if key not in params:
                    close = difflib.get_close_matches(key, named, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise TypeError(
                        f"actor {self._actor.name!r}: unexpected keyword argument {key!r}{hint}"
                    )
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"actor {self._actor.name!r}: {exc}") from None
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(
                        f"actor {self._actor.name!r}: values for *{name} cannot be named in a "
                        "job; build the Job(...) yourself"
                    )
            else:
                out[name] = value
        return out

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """A `Job` for this call (not sent): the actor's name and queue, the bound arguments."""
        arguments = self.arguments(*args, **kwargs)
        try:
            return Job(
                self._actor.name,
                queue=self._actor.queue,
                args=arguments or None,
                **self._options,
            )
        except TypeError as exc:
            raise TypeError(f"actor {self._actor.name!r}: job options: {exc}") from None

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Build the job (arguments checked first) and enqueue it; returns the sent `Job`.

        Its message id is `job.last_id`; `await job.wait()` waits for its result.
        """
        return await self.job(*args, **kwargs).enqueue()

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The same as `enqueue` (the name other task libraries use)."""
        return await self.enqueue(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ActorHandle(actor={self._actor.name!r}, queue={self._actor.queue!r})"


class ActorFunction(Protocol[P, R]):
    """The static type of a function decorated by `@router.actor`: itself, plus the handle."""

    __name__: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function directly, as before it was decorated."""

    @property
    def handle(self) -> ActorHandle[P]:
        """The actor's handle (its other attributes are bound to it)."""

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """See `ActorHandle.job`."""

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """See `ActorHandle.enqueue`."""

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """See `ActorHandle.send`."""

    def options(self, **job_options: Any) -> ActorHandle[P]:
        """See `ActorHandle.options`."""


def attach(function: Callable[..., Any], handle: ActorHandle[Any]) -> None:
    """Set `handle`, `job`, `enqueue`, `send`, `options` on `function` when it takes attributes.

    A callable that takes none (a bound method, a builtin) stays as it is: its handle is still
    `router.actors[name].handle`. An attribute of that name the function has for its own
    reasons is not overwritten.
    """
    bound = {
        "handle": handle,
        "job": handle.job,
        "enqueue": handle.enqueue,
        "send": handle.send,
        "options": handle.options,
    }
    previous = getattr(function, "handle", None)
    for name, value in bound.items():
        current = getattr(function, name, None)
        ours = isinstance(previous, ActorHandle) and (
            current is previous or getattr(current, "__self__", None) is previous
        )
        if current is not None and not ours:
            continue
        try:
            setattr(function, name, value)
        except (AttributeError, TypeError):
            return
