"""Run a script as `__main__`, announcing when its event loop starts handling SIGINT.

`python sigint_when_ready.py SCRIPT` prints `READY_MARKER` (see conftest.py) right after the
script's event loop installs a SIGINT handler, i.e. once a `Worker` is running. A test then
sends SIGINT: sent any earlier, it would be a plain KeyboardInterrupt rather than a graceful stop.
"""

from __future__ import annotations

import asyncio
import runpy
import signal
import sys
from typing import Any

READY_MARKER = "repid-docs-test: SIGINT handler installed"


class _AnnouncingLoop(asyncio.SelectorEventLoop):
    announced = False

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        super().add_signal_handler(sig, callback, *args)
        # Once: `Worker.run()` handles SIGINT from its start, then hands over to its runner.
        if sig == signal.SIGINT and not self.announced:
            self.announced = True
            print(READY_MARKER, flush=True)


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _AnnouncingLoop()


if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    asyncio.set_event_loop_policy(_Policy())
    runpy.run_path(script, run_name="__main__")
