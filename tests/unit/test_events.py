"""gateway.events: the envelopes it makes without the dataclass's __init__."""

from __future__ import annotations

import dataclasses

from adapters import event_batch
from gateway.events import event_envelope, new_envelope
from gateway.ports import Envelope


def test_new_envelope_is_the_constructors_envelope() -> None:
    made = new_envelope("e1", "resource.Slot.created", {"id": "s"}, "prov", "corr", "2026", {})
    built = Envelope(
        id="e1",
        type="resource.Slot.created",
        body={"id": "s"},
        tenant="prov",
        correlation_id="corr",
        created_at="2026",
    )
    assert made == built
    assert vars(made) == vars(built)  # every field, and nothing else
    # the fields it sets are the dataclass's (a new field would need a value here)
    assert list(vars(made)) == [f.name for f in dataclasses.fields(Envelope)]
    assert hash(made.id) and made.attempt == 0 and made.reply_to is None


def test_event_envelope_and_unpack_match_the_constructor() -> None:
    ev = {
        "id": "e1",
        "type": "booking.booked",
        "tenant": None,
        "correlation_id": "c",
        "created_at": "t",
        "body": {"a": 1},
    }
    assert event_envelope(ev) == Envelope(
        id="e1",
        type="booking.booked",
        body={"a": 1},
        tenant=None,
        correlation_id="c",
        created_at="t",
    )
    msgs = [
        Envelope(
            id=f"e{i}",
            type="x.y",
            body={"i": i},
            tenant="p",
            correlation_id="c",
            created_at="t",
            headers={"h": i} if i else {},
        )
        for i in range(3)
    ]
    assert event_batch.unpack(event_batch.pack(msgs)) == msgs
