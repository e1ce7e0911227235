"""Dependency injection for actors: `Annotated[T, Depends(fn)]` and `MessageDependency`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin, get_type_hints

__all__ = ["Depends", "find_injected_parameters"]


class Depends:
    """Marks an actor parameter whose value is produced by calling `fn` for each run.

    `fn` may be sync or async and may itself have `Depends` / `MessageDependency` parameters.
    Sync functions run in the worker's thread pool (or process pool with `run_in_process=True`).
    Use `override(other)` in tests to swap the implementation.
    """

    __slots__ = ("_fn", "_override", "run_in_process")

    def __init__(self, fn: Callable[..., Any], *, run_in_process: bool = False) -> None:
        if not callable(fn):
            raise TypeError("Depends() needs a callable")
        self._fn = fn
        self._override: Callable[..., Any] | None = None
        self.run_in_process = run_in_process

    @property
    def fn(self) -> Callable[..., Any]:
        return self._override or self._fn

    def override(self, other: Callable[..., Any] | None) -> None:
        """Use `other` instead of the original function (None restores the original)."""
        self._override = other

    def __repr__(self) -> str:
        return f"Depends({getattr(self.fn, '__qualname__', self.fn)!r})"


def _is_message_dependency(annotation: Any) -> bool:
    from repid.message import MessageDependency

    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return isinstance(annotation, type) and issubclass(annotation, MessageDependency)


def find_injected_parameters(fn: Callable[..., Any]) -> tuple[dict[str, Depends], list[str]]:
    """Return the `Depends` parameters of `fn` and the names of its `MessageDependency` ones."""
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception:
        hints = dict(getattr(fn, "__annotations__", {}))
    depends: dict[str, Depends] = {}
    message_params: list[str] = []
    for name in inspect.signature(fn).parameters:
        annotation = hints.get(name)
        if annotation is None:
            continue
        if _is_message_dependency(annotation):
            message_params.append(name)
            continue
        if get_origin(annotation) is Annotated:
            for meta in annotation.__metadata__:
                if isinstance(meta, Depends):
                    depends[name] = meta
                    break
    return depends, message_params


async def resolve_dependency(
    dep: Depends,
    message: Any,
    run_sync: Callable[[Callable[..., Any], dict[str, Any], bool], Any],
) -> Any:
    """Call a dependency, resolving its own injected parameters first."""
    fn = dep.fn
    sub_depends, message_params = find_injected_parameters(fn)
    kwargs: dict[str, Any] = dict.fromkeys(message_params, message)
    for name, sub in sub_depends.items():
        kwargs[name] = await resolve_dependency(sub, message, run_sync)
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    result = run_sync(fn, kwargs, dep.run_in_process)
    if asyncio.isfuture(result) or inspect.isawaitable(result):
        return await result
    return result
