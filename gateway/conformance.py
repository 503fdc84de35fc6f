"""Conformance check of a sandbox provider (issue 8): its data and its webhook endpoint.

``check_data`` is pure: it judges the provider's current ``Schedule`` and
``Slot`` documents (as the store keeps them, with their ``central`` model) at
an instant. ``probe_endpoint`` sends three test deliveries through a
``WebhookSender`` (the gateway's own, so signing is exactly what real
deliveries get): a correctly signed one (2xx within the time-out), one signed
with a wrong secret (must be refused, non-2xx) and the first one again with
the same ``webhook-id`` (a duplicate: 2xx again, no error). ``report`` puts
the checks together: the whole passes when no check fails (skipped is fine).
"""

from __future__ import annotations

import secrets as _secrets
import uuid
from base64 import b64encode
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.ports import Document, WebhookRequest, WebhookSender
from gateway.timeutil import to_store
from mappings import codes

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
LIVE_SLOT = ("free", "busy", "busy-unavailable", "busy-tentative")
HORIZON_SLOT = ("free", "busy", "busy-tentative")  # free or booked: what patients see ahead
SHOW = 5  # examples named in a failure's details


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    status: str
    details: str
    how_to_fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _central(doc: Document) -> dict[str, Any]:
    return dict(doc.get("central") or {})


def _rid(doc: Document) -> str:
    return str(doc.get("id") or str(doc["_id"]).rsplit("/", 1)[-1])


def _examples(items: list[str]) -> str:
    more = f" (and {len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def check_data(schedules: list[Document], slots: list[Document], now: datetime) -> list[Check]:
    """The data checks over the provider's (not deleted) Schedule and Slot documents."""
    scheds = {_rid(d): _central(d) for d in schedules if not d.get("deleted")}
    live = [(_rid(d), _central(d)) for d in slots if not d.get("deleted")]
    live = [(rid, s) for rid, s in live if s.get("status") in LIVE_SLOT]
    scope_info = codes.scopes()
    checks: list[Check] = []

    # 1. every scope with slots has an active schedule that serves it
    served = {sc for s in scheds.values() if s.get("active", True) for sc in s.get("scopes") or []}
    slot_scopes = sorted({str(s.get("scope")) for _, s in live})
    orphans = sorted(
        rid
        for rid, s in live
        if s.get("schedule_id") not in scheds
        or not scheds[str(s.get("schedule_id"))].get("active", True)
    )
    uncovered = [sc for sc in slot_scopes if sc not in served]
    title = "Schedules cover the scopes you serve"
    if not live:
        checks.append(
            Check(
                "schedules-cover-scopes",
                title,
                FAIL,
                "no slots: nothing a patient could book",
                "POST a transaction Bundle with your Location, an active Schedule per scope "
                "(Schedule.serviceType) and its Slots (see docs/examples/).",
            )
        )
    elif uncovered or orphans:
        parts = []
        if uncovered:
            parts.append(f"scopes with slots but no active schedule: {', '.join(uncovered)}")
        if orphans:
            parts.append(f"slots on a missing or inactive schedule: {_examples(orphans)}")
        checks.append(
            Check(
                "schedules-cover-scopes",
                title,
                FAIL,
                "; ".join(parts),
                "Send an active Schedule (active=true) whose serviceType names each scope you "
                "have slots in, and point every Slot.schedule at it.",
            )
        )
    else:
        checks.append(
            Check(
                "schedules-cover-scopes",
                title,
                PASS,
                f"{len(slot_scopes)} scope(s) with slots, each on an active schedule: "
                + ", ".join(slot_scopes),
            )
        )

    # 2. slots carry a category where the scope requires one (R-SCHED-3)
    title = "Slots carry a category where the scope requires one"
    known = codes.slot_categories()
    needing = [
        (rid, s)
        for rid, s in live
        if (info := scope_info.get(str(s.get("scope")))) and info.slot_category_required
    ]
    missing = sorted(rid for rid, s in needing if s.get("category") not in known)
    if not needing:
        checks.append(Check("slot-category", title, SKIPPED, "no slots in a scope that needs one"))
    elif missing:
        checks.append(
            Check(
                "slot-category",
                title,
                FAIL,
                f"{len(missing)} slot(s) without a slot category: {_examples(missing)}",
                "Give every such Slot an appointmentType coding from "
                f"{codes.SLOT_CATEGORY_SYSTEM} ({', '.join(known)}).",
            )
        )
    else:
        checks.append(
            Check("slot-category", title, PASS, f"all {len(needing)} slot(s) carry a category")
        )

    # 3. no overlapping slots within one schedule (overbooked slots are meant to overlap)
    title = "No overlapping slots in one schedule"
    by_schedule: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for rid, s in live:
        if not s.get("overbooked"):
            by_schedule[str(s.get("schedule_id"))].append((s["start"], s["end"], rid))
    overlaps: list[str] = []
    for sid, items in sorted(by_schedule.items()):
        items.sort()
        latest_end, latest_id = "", ""
        for start, end, rid in items:
            if latest_end and start < latest_end:
                overlaps.append(f"Slot/{latest_id} and Slot/{rid} (Schedule/{sid})")
            if end > latest_end:
                latest_end, latest_id = end, rid
    if not live:
        checks.append(Check("no-overlap", title, SKIPPED, "no slots"))
    elif overlaps:
        checks.append(
            Check(
                "no-overlap",
                title,
                FAIL,
                f"{len(overlaps)} overlap(s): {_examples(overlaps)}",
                "Make the slots of one schedule follow each other (a slot starts at or after "
                "the previous one ends); delete or move the duplicates, or mark a deliberate "
                "double booking as overbooked.",
            )
        )
    else:
        checks.append(Check("no-overlap", title, PASS, "no two slots of a schedule overlap"))

    # 4. the future horizon reaches the scope's booking window (R-WAIT-2, R-PAT-4)
    title = "Slots reach as far ahead as patients may book"
    latest: dict[str, str] = {}
    for _, s in live:
        if s.get("status") in HORIZON_SLOT:
            sc = str(s.get("scope"))
            latest[sc] = max(latest.get(sc, ""), s["end"])
    short = []
    for sc in slot_scopes:
        info = scope_info.get(sc)
        if info is None:
            continue
        needed = to_store(now + timedelta(days=info.self_booking_days))
        if latest.get(sc, "") < needed:
            short.append(
                f"{sc}: last free/booked slot ends {latest.get(sc) or 'never'}, "
                f"patients may book up to {needed} ({info.self_booking_days} days)"
            )
    if not slot_scopes:
        checks.append(Check("horizon", title, SKIPPED, "no slots"))
    elif short:
        checks.append(
            Check(
                "horizon",
                title,
                FAIL,
                "; ".join(short),
                "Publish slots at least as far ahead as the scope's booking window "
                "(self_booking_days) and keep extending them every day.",
            )
        )
    else:
        checks.append(
            Check("horizon", title, PASS, "every scope has slots to the end of its booking window")
        )
    return checks


def wrong_secret() -> str:
    """A well-formed ``whsec_`` secret nobody holds."""
    return "whsec_" + b64encode(_secrets.token_bytes(24)).decode()


WEBHOOK_IDS = ("webhook-2xx", "webhook-bad-signature", "webhook-duplicate")
WEBHOOK_TITLES = {
    "webhook-2xx": "The endpoint answers 2xx within the time-out to a signed delivery",
    "webhook-bad-signature": "The endpoint rejects a delivery with a wrong signature",
    "webhook-duplicate": "The endpoint accepts a duplicate webhook-id without error",
}


def skipped_webhook_checks(reason: str) -> list[Check]:
    return [Check(i, WEBHOOK_TITLES[i], SKIPPED, reason) for i in WEBHOOK_IDS]


async def probe_endpoint(
    sender: WebhookSender,
    *,
    url: str,
    secrets: tuple[str, ...],
    body: bytes,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
    tenant: str = "",
    subscription: str = "",
) -> list[Check]:
    """Three test deliveries to ``url`` through ``sender``; see the module docstring."""
    msg_id = f"conformance-{uuid.uuid4().hex}"

    def request(mid: str, keys: tuple[str, ...]) -> WebhookRequest:
        return WebhookRequest(
            url=url,
            msg_id=mid,
            body=body,
            secrets=keys,
            headers=headers or {},
            timeout=timeout,
            tenant=tenant,
            subscription=subscription,
        )

    checks: list[Check] = []
    first = await sender.send(request(msg_id, secrets))
    if first.ok:
        checks.append(
            Check(
                "webhook-2xx",
                WEBHOOK_TITLES["webhook-2xx"],
                PASS,
                f"HTTP {first.status} in {first.latency_ms:.0f} ms",
            )
        )
    else:
        checks.append(
            Check(
                "webhook-2xx",
                WEBHOOK_TITLES["webhook-2xx"],
                FAIL,
                f"{first.error or f'HTTP {first.status}'} ({first.latency_ms:.0f} ms)",
                f"Answer a correctly signed POST with a 2xx within {timeout:g} s; queue the "
                "work and answer first. Check the URL, TLS and your firewall.",
            )
        )

    bad = await sender.send(request(f"conformance-{uuid.uuid4().hex}", (wrong_secret(),)))
    if bad.ok:
        checks.append(
            Check(
                "webhook-bad-signature",
                WEBHOOK_TITLES["webhook-bad-signature"],
                FAIL,
                f"a delivery signed with a wrong secret was accepted (HTTP {bad.status})",
                "Verify webhook-signature (HMAC-SHA256 of 'id.timestamp.body' with your "
                "subscription's whsec_ secret, per Standard Webhooks) before anything else, "
                "and answer 400 or 401 when it does not match.",
            )
        )
    elif bad.status is None:
        checks.append(
            Check(
                "webhook-bad-signature",
                WEBHOOK_TITLES["webhook-bad-signature"],
                FAIL,
                f"no HTTP answer: {bad.error}",
                "Answer a wrongly signed POST with 400 or 401 (do not drop the connection).",
            )
        )
    else:
        checks.append(
            Check(
                "webhook-bad-signature",
                WEBHOOK_TITLES["webhook-bad-signature"],
                PASS,
                f"refused with HTTP {bad.status}",
            )
        )

    again = await sender.send(request(msg_id, secrets))
    if not first.ok:
        checks.append(
            Check(
                "webhook-duplicate",
                WEBHOOK_TITLES["webhook-duplicate"],
                SKIPPED,
                "the first delivery failed, so there is no duplicate to test",
            )
        )
    elif again.ok:
        checks.append(
            Check(
                "webhook-duplicate",
                WEBHOOK_TITLES["webhook-duplicate"],
                PASS,
                f"the same webhook-id again: HTTP {again.status}",
            )
        )
    else:
        checks.append(
            Check(
                "webhook-duplicate",
                WEBHOOK_TITLES["webhook-duplicate"],
                FAIL,
                f"the same webhook-id again: {again.error or f'HTTP {again.status}'}",
                "A retry may bring a webhook-id you have seen: answer 2xx again and skip "
                "the work (keep the ids you processed, e.g. a unique index).",
            )
        )
    return checks


def report(provider_id: str, now: datetime, checks: list[Check]) -> dict[str, Any]:
    failed = [ch.id for ch in checks if ch.status == FAIL]
    return {
        "provider_id": provider_id,
        "checked_at": to_store(now),
        "result": FAIL if failed else PASS,
        "passed": not failed,
        "failed": failed,
        "checks": [ch.to_json() for ch in checks],
    }
