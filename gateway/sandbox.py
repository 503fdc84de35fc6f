"""Sandbox housekeeping (only reachable when ``CER_MODE=sandbox``).

Every document that belongs to a provider carries its id in ``tenant``; that
is what a per-provider reset relies on (and what every new collection must
follow: see ``gateway.schema``).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway import constants as c
from gateway.ports import Store


async def reset(
    store: Store, collections: Iterable[str], provider_id: str | None
) -> dict[str, int]:
    """Delete one provider's data (and the provider), or everything; counts per collection."""
    removed: dict[str, int] = {}
    for coll in collections:
        if provider_id is None:
            n = await store.delete_many(coll, {})
        elif coll == c.PROVIDERS:
            n = await store.delete_many(coll, {"_id": provider_id})
        else:
            n = await store.delete_many(coll, {"tenant": provider_id})
        if n:
            removed[coll] = n
    return removed
