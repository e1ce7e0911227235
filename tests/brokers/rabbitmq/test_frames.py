"""The hand-marshalled frames of the batched publisher are byte for byte what pamqp writes."""

from __future__ import annotations

import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from repid.brokers.rabbitmq._publisher import body_frames, header_frame


@pytest.mark.parametrize(
    "properties",
    [
        spec.Basic.Properties(
            content_type="application/json", delivery_mode=2, priority=0, message_id="1"
        ),
        spec.Basic.Properties(
            content_type="application/json", delivery_mode=1, priority=2, message_id="x" * 200
        ),
        spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            priority=1,
            message_id="7",
            headers={"x-repid-dead-letter": "{}"},
        ),
    ],
)
@pytest.mark.parametrize("body_size", [0, 1, 70_000])
def test_header_frame_matches_pamqp(properties: spec.Basic.Properties, body_size: int) -> None:
    expected = pamqp.frame.marshal(ContentHeader(properties=properties, body_size=body_size), 7)
    assert header_frame(7, properties, body_size) == expected


def test_body_frames_match_pamqp() -> None:
    body = bytes(range(256)) * 50
    expected = [
        pamqp.frame.marshal(ContentBody(body[i : i + 4096]), 3) for i in range(0, len(body), 4096)
    ]
    assert body_frames(3, body, 4096) == expected
    assert body_frames(3, b"", 4096) == []
