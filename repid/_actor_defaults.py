"""Actor priorities known to this process, for producers: a `Job` that sets no priority gets
the one of the actor of its name registered here (`@router.actor(priority=...)`)."""

from __future__ import annotations

PRIORITIES: dict[str, int] = {}
"""Actor name -> priority of the actor registered last under that name with a priority."""
