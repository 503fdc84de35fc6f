"""Message, event and resource ids: random version-4 UUIDs as 32 hex digits."""

from __future__ import annotations

import os
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


def test_a_forked_child_draws_other_ids() -> None:
    # new_id keeps random bytes for later ids: a child must not hand out the parent's
    new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, "".join(new_id() for _ in range(3)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    os.close(write)
    parent = "".join(new_id() for _ in range(3))
    assert len(child) == len(parent) == 96 and child != parent
    assert not {child[i : i + 32] for i in range(0, 96, 32)} & {
        parent[i : i + 32] for i in range(0, 96, 32)
    }
