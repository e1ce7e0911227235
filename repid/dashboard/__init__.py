"""The repid web dashboard: queues, dead letters, workers and jobs, as an ASGI application.

`create_app(connection)` returns a Starlette app (`pip install repid[dashboard]`); `repid
dashboard --broker URL` serves it. See docs/dashboard.md.
"""

from __future__ import annotations

from repid.dashboard.app import create_app
from repid.dashboard.security import BasicAuth, TokenAuth, auth_from_env

__all__ = ["BasicAuth", "TokenAuth", "auth_from_env", "create_app"]
