"""The worker: consumes queues, routes each message to its actor and settles the outcome.

Everything that decides what happens to a message lives here, once, for every broker: argument
validation, per-job timeouts, retries with the actor's policy, dead-lettering with the error,
recurring jobs, lease renewal, bounded concurrency and graceful shutdown. `docs/internals.md`
("The worker") walks through the modules.
"""

from repid.worker.runner import Runner
from repid.worker.worker import Worker

__all__ = ["Runner", "Worker"]
