"""`build_asyncapi` and `repid asyncapi`: documents valid against the official 3.0.0 schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from cli_shop_app import mail, orders

from repid import ConfigurationError, Router
from repid.asyncapi import build_asyncapi
from repid.cli import main


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


@pytest.fixture
def document() -> dict[str, Any]:
    return build_asyncapi([orders, mail], title="Shop", version="2.1.0", description="d")


def test_document_is_valid_asyncapi_3(document, asyncapi_validator) -> None:
    errors = [e.message for e in asyncapi_validator.iter_errors(document)]
    assert errors == []
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "Shop", "version": "2.1.0", "description": "d"}


def test_validator_rejects_a_broken_document(document, asyncapi_validator) -> None:
    document["operations"]["place_order"]["action"] = "consume"
    with pytest.raises(jsonschema.ValidationError):
        asyncapi_validator.validate(document)


def test_channels_are_queues_and_operations_are_actors(document) -> None:
    assert sorted(document["channels"]) == ["mail", "orders"]
    assert sorted(document["channels"]["orders"]["messages"]) == ["cancel_order", "place_order"]
    operation = document["operations"]["place_order"]
    assert operation["action"] == "receive"
    assert operation["summary"] == "Place an order."
    assert resolve(document, operation["channel"]["$ref"])["address"] == "orders"
    message = resolve(document, operation["messages"][0]["$ref"])
    assert resolve(document, message["$ref"])["name"] == "place_order"


def test_every_reference_resolves(document) -> None:
    refs = all_refs(document)
    assert "#/components/schemas/Order" in refs
    for ref in refs:
        resolve(document, ref)


def test_payload_is_the_keyword_arguments_object(document) -> None:
    payload = document["components"]["messages"]["place_order"]["payload"]
    arguments = resolve(document, payload["$ref"])
    assert arguments["type"] == "object"
    assert arguments["additionalProperties"] is False
    assert sorted(arguments["required"]) == ["order", "placed_at"]
    assert arguments["properties"]["order"] == {"$ref": "#/components/schemas/Order"}
    assert arguments["properties"]["placed_at"]["format"] == "date-time"
    schemas = document["components"]["schemas"]
    assert schemas["Currency"]["enum"] == ["EUR", "USD"]
    assert schemas["Line"]["required"] == ["sku"]
    # positional-only parameters are still sent by name
    cancel = resolve(
        document, document["components"]["messages"]["cancel_order"]["payload"]["$ref"]
    )
    assert cancel["required"] == ["order_id"]


def test_unvalidated_actor_gets_an_open_object(document) -> None:
    assert document["components"]["messages"]["send_mail"]["payload"]["type"] == "object"


def test_payload_schema_accepts_a_real_payload(document) -> None:
    schema = {**resolve(document, "#/components/schemas/place_order_arguments")}
    schema["components"] = document["components"]
    jsonschema.Draft7Validator(schema).validate(
        {"order": {"id": 1, "lines": [{"sku": "a"}]}, "placed_at": "2024-01-01T00:00:00Z"}
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate({"order": {"id": 1}, "placed_at": "x"})


def test_empty_router_gives_a_valid_empty_document(asyncapi_validator) -> None:
    document = build_asyncapi(Router())
    asyncapi_validator.validate(document)
    assert document["channels"] == {}
    assert document["operations"] == {}


def test_unresolvable_hint_is_a_configuration_error() -> None:
    router = Router()

    @router.actor
    def broken(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(ConfigurationError, match="actor 'broken'"):
        build_asyncapi(router)


def test_cli_writes_a_valid_document(tmp_path, asyncapi_validator) -> None:
    output = tmp_path / "asyncapi.json"
    assert main(["asyncapi", "cli_shop_app:routers", "-o", str(output), "--app-version", "3"]) == 0
    document = json.loads(output.read_text())
    asyncapi_validator.validate(document)
    assert document["info"] == {"title": "cli_shop_app", "version": "3"}
    assert sorted(document["operations"]) == ["cancel_order", "place_order", "send_mail"]


def test_cli_prints_to_stdout(capsys, asyncapi_validator) -> None:
    assert main(["asyncapi", "cli_shop_app:app", "--title", "Shop"]) == 0
    asyncapi_validator.validate(json.loads(capsys.readouterr().out))
