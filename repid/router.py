"""`Router` and `@router.actor`: register functions as actors, by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import ModuleType
from typing import Any, ParamSpec, TypeVar, overload

from repid import _actor_defaults
from repid.converter import ConverterT, DefaultConverter
from repid.data import PrioritiesT
from repid.dependencies import Depends, find_injected_parameters
from repid.errors import ConfigurationError
from repid.handle import ActorFunction, ActorHandle, attach
from repid.lifecycle import RateLimit
from repid.queue import validate_name
from repid.retry_policy import RetryPolicyT, default_retry_policy_factory

__all__ = ["ActorData", "Router", "RouterDefaults"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class RouterDefaults:
    """Defaults applied to the actors of a router that do not set their own."""

    queue: str = "default"
    retry_policy: RetryPolicyT = field(default_factory=default_retry_policy_factory)
    run_in_process: bool = False
    converter: type[ConverterT] = DefaultConverter
    timeout: timedelta | None = None
    """Execution timeout of the actors' jobs that do not set one (None: the Job's default)."""
    retries: int | None = None
    """Retries of the actors' jobs that do not set `retries`."""
    priority: PrioritiesT | None = None
    """Priority of the actors' jobs that do not set one (applied by the producing process)."""
    error_history: int | None = None
    """Failed attempts the actors' messages keep (None: the worker's `error_history`)."""


class ActorData:
    """An actor: its function and how to run it (built once, used for every message)."""

    __slots__ = (
        "_handle",
        "converter",
        "depends",
        "error_history",
        "fn",
        "is_async",
        "max_concurrency",
        "message_params",
        "name",
        "priority",
        "queue",
        "rate_limit",
        "retries",
        "retry_policy",
        "run_in_process",
        "timeout",
        "validate_output",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        queue: str,
        retry_policy: RetryPolicyT,
        run_in_process: bool,
        converter: ConverterT,
        max_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        timeout: timedelta | None = None,
        retries: int | None = None,
        priority: PrioritiesT | None = None,
        error_history: int | None = None,
    ) -> None:
        if timeout is not None and timeout < timedelta(seconds=1):
            raise ConfigurationError(f"actor {name!r}: timeout must be at least 1 second")
        if retries is not None and (not isinstance(retries, int) or retries < 0):
            raise ConfigurationError(f"actor {name!r}: retries must be an integer >= 0")
        if error_history is not None and (not isinstance(error_history, int) or error_history < 0):
            raise ConfigurationError(f"actor {name!r}: error_history must be an integer >= 0")
        self.timeout = timeout
        self.retries = retries
        self.error_history = error_history
        self.priority = None if priority is None else PrioritiesT(priority)
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigurationError(f"actor {name!r}: max_concurrency must be >= 1")
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.fn = fn
        self.name = name
        self.queue = queue
        self.retry_policy = retry_policy
        self.run_in_process = run_in_process
        self.converter = converter
        self.is_async = inspect.iscoroutinefunction(fn)
        depends, message_params = find_injected_parameters(fn)
        self.depends: dict[str, Depends] = depends
        self.message_params: list[str] = message_params
        self.validate_output: Callable[[Any], Any] | None = None
        """The converter's check of the return value, when the actor's annotation asks for one."""
        self.refresh_output_check()
        if run_in_process and self.is_async:
            raise ValueError(f"actor {name!r}: run_in_process needs a synchronous function")
        self._handle: ActorHandle[Any] | None = None

    @property
    def handle(self) -> ActorHandle[Any]:
        """The typed handle that builds and sends this actor's jobs (see `repid.handle`)."""
        if self._handle is None:
            self._handle = ActorHandle(self)
        return self._handle

    def refresh_output_check(self) -> None:
        """Pick up the converter's output validator (after its type hints resolved)."""
        try:
            wanted = bool(getattr(self.converter, "validates_output", False))
        except ConfigurationError:
            wanted = False  # hints not resolvable yet: `Worker.run` prepares and retries
        self.validate_output = getattr(self.converter, "validate_output", None) if wanted else None

    def __repr__(self) -> str:
        return f"ActorData(name={self.name!r}, queue={self.queue!r})"


class Router:
    """A collection of actors. `Worker` is itself a router.

    Args:
        defaults: values for the actors that do not set their own.
    """

    def __init__(self, *, defaults: RouterDefaults | None = None) -> None:
        self.defaults = defaults or RouterDefaults()
        self.actors: dict[str, ActorData] = {}

    @property
    def topics_by_queue(self) -> dict[str, frozenset[str]]:
        """Actor names grouped by the queue they listen on."""
        out: dict[str, set[str]] = {}
        for actor in self.actors.values():
            out.setdefault(actor.queue, set()).add(actor.name)
        return {queue: frozenset(names) for queue, names in out.items()}

    @overload
    def actor(self, fn: Callable[P, R], /) -> ActorFunction[P, R]: ...

    @overload
    def actor(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        retry_policy: RetryPolicyT | None = None,
        run_in_process: bool | None = None,
        converter: type[ConverterT] | None = None,
        max_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        timeout: timedelta | None = None,
        retries: int | None = None,
        priority: PrioritiesT | None = None,
        error_history: int | None = None,
    ) -> Callable[[Callable[P, R]], ActorFunction[P, R]]: ...

    def actor(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        retry_policy: RetryPolicyT | None = None,
        run_in_process: bool | None = None,
        converter: type[ConverterT] | None = None,
        max_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        timeout: timedelta | None = None,
        retries: int | None = None,
        priority: PrioritiesT | None = None,
        error_history: int | None = None,
    ) -> Any:
        """Register a function as an actor; returns the same function, with its handle attached.

        Usable bare (`@router.actor`) or with arguments (`@router.actor(name=..., queue=...)`).
        The function stays callable as before; `fn.enqueue(...)` / `fn.send(...)` enqueue a job
        for the actor (its name and queue, the arguments checked against the signature),
        `fn.job(...)` builds one, `fn.options(priority=...)` sets `Job` options (see
        `repid.handle.ActorHandle`). A callable that takes no attributes is registered all the
        same; its handle is `router.actors[name].handle`.

        Args:
            name: the actor's name (default: the function's name).
            queue: the queue it listens on (default: the router's default queue).
            retry_policy: delay before each retry (default: the router's).
            run_in_process: run a sync function in a process pool instead of a thread pool.
            converter: turns payloads into arguments (default: pydantic validation).
            max_concurrency: at most this many runs of the actor at once, across the workers of
                the broker where it can share state (in-memory: its process), else per worker.
            rate_limit: at most `RateLimit(n, per)` starts of the actor, shared the same way.
            timeout: execution timeout of the actor's jobs whose `Job` keeps the default
                (the worker applies it); a `Job(timeout=...)` that sets one wins.
            retries: retries of the actor's jobs whose `Job` does not pass `retries` (the
                worker applies it); `Job(retries=n)`, even `0`, wins.
            priority: priority of the actor's jobs whose `Job` does not pass `priority`. It is
                chosen at `enqueue()`, so it applies where the producing process has this
                actor registered (imported); elsewhere such a job is `MEDIUM`.
            error_history: failed attempts its messages keep (errors carried from retry to
                retry onto the dead letter and the failed result); default: the worker's
                `error_history`. 0 keeps none.
        """

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            actor_name = validate_name(function.__name__ if name is None else name, "actor name")
            actor_queue = validate_name(
                self.defaults.queue if queue is None else queue, "queue name"
            )
            converter_cls = converter or self.defaults.converter
            actor_data = ActorData(
                fn=function,
                name=actor_name,
                queue=actor_queue,
                retry_policy=retry_policy or self.defaults.retry_policy,
                run_in_process=(
                    self.defaults.run_in_process if run_in_process is None else run_in_process
                ),
                converter=converter_cls(function),
                max_concurrency=max_concurrency,
                rate_limit=rate_limit,
                timeout=self.defaults.timeout if timeout is None else timeout,
                retries=self.defaults.retries if retries is None else retries,
                priority=self.defaults.priority if priority is None else priority,
                error_history=(
                    self.defaults.error_history if error_history is None else error_history
                ),
            )
            self.actors[actor_name] = actor_data
            attach(function, actor_data.handle)
            if actor_data.priority is not None:
                _actor_defaults.PRIORITIES[actor_name] = int(actor_data.priority)
            return function

        if fn is not None:
            return register(fn)
        return register

    def include_router(self, router: Router) -> None:
        """Add every actor of `router`; an actor with an existing name replaces it."""
        self.actors.update(router.actors)

    def include_module(self, module: ModuleType | str, *, recursive: bool = False) -> int:
        """Add the actors of every `Router` defined in `module` (a module or its dotted name),
        and with `recursive=True` in every module of the package below it (imported here).

        Returns how many actors were added. Routers are found by their module-level names, the
        way `repid run module` finds them; this router itself is skipped.
        """
        import importlib
        import pkgutil

        root = importlib.import_module(module) if isinstance(module, str) else module
        modules = [root]
        if recursive and hasattr(root, "__path__"):
            prefix = root.__name__ + "."
            modules.extend(
                importlib.import_module(info.name)
                for info in pkgutil.walk_packages(root.__path__, prefix)
            )
        before = len(self.actors)
        seen: list[Router] = []
        for found in modules:
            for value in vars(found).values():
                fresh = isinstance(value, Router) and value is not self
                if fresh and not any(value is known for known in seen):
                    seen.append(value)
                    self.include_router(value)
        return len(self.actors) - before
