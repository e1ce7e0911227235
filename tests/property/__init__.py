"""Hypothesis tests of repid's pure parts and of the in-memory broker's state machine."""

from __future__ import annotations

import os

from hypothesis import settings

PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("REPID_HYPOTHESIS_EXAMPLES", "200")), deadline=None
)
"""Applied to each test here (not loaded as a global profile, which would change other tests).
Set REPID_HYPOTHESIS_EXAMPLES to run more (or fewer) examples."""
