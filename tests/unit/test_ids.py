"""Message, event and resource ids: random version-4 UUIDs as 32 hex digits."""

from __future__ import annotations

import uuid

from gateway.events import new_id
from gateway.http.fhir import ID_RE, new_resource_id, new_resource_ids


def test_ids_are_uuid4_hex_and_distinct() -> None:
    seen = set()
    bundle = new_resource_ids()
    for make in (new_id, new_resource_id, lambda: next(bundle)):
        for _ in range(5000):
            i = make()
            u = uuid.UUID(hex=i)
            assert u.hex == i and len(i) == 32
            assert u.version == 4 and u.variant == uuid.RFC_4122
            assert ID_RE.match(i)  # a valid FHIR id
            seen.add(i)
    assert len(seen) == 15000
