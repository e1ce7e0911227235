"""AsyncAPI tests: the official 3.0.0 JSON Schema (vendored, see data/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

SCHEMA_PATH = Path(__file__).parent / "data" / "asyncapi-3.0.0.json"
APPS = Path(__file__).parent.parent / "cli" / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))


@pytest.fixture(scope="session")
def asyncapi_validator() -> jsonschema.Draft7Validator:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)
