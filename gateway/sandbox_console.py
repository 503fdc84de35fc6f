"""What the sandbox console shows (read side): webhook deliveries and why they failed.

A *delivery* is one webhook notification to one subscription: an event
(``webhook_events``, numbered per subscription, with its tries in
``webhook_attempts``), or a handshake / heartbeat the ``sandbox:inbox``
endpoint captured (``sandbox_inbox``). For ``sandbox:inbox`` the exact
request is kept, so its signature is checked here with the Standard Webhooks
reference library against the subscription's secrets; for a provider's own
endpoint the console shows each try (status code, error, time) and the next
one, and the payload rebuilt from the kept event.

Messages are English text with ``{name}`` placeholders and their values
apart, so the web pages translate them (``gateway.http.ui.i18n``).
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway import constants as c
from gateway import subscriptions as subs
from gateway.ports import Document, Store
from gateway.resources import version_doc
from gateway.timeutil import from_store

SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
VALID = {
    "current": "valid signature with the current secret",
    "previous": "valid signature with a previous secret (it still signs after a rotation)",
}
LIST_LIMIT = 50  # deliveries on one page
FAILING_LIMIT = 50  # failing deliveries on the console's front page


@dataclass(frozen=True)
class Message:
    """A sentence for a person: English text with ``{name}`` placeholders, and the values."""

    text: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def english(self) -> str:
        return self.text.format(**self.values) if self.values else self.text


@dataclass(frozen=True)
class SignatureCheck:
    """``ok`` when a ``v1`` signature matches one of the subscription's secrets."""

    ok: bool
    message: Message


@dataclass(frozen=True)
class Attempt:
    at: str
    attempt: int
    trigger: str
    outcome: str
    status_code: int | None
    latency_ms: float
    error: str | None
    response: str


@dataclass(frozen=True)
class Capture:
    """A request the ``sandbox:inbox`` endpoint kept: exactly what was signed."""

    id: str
    at: str
    webhook_id: str
    headers: dict[str, str]
    raw_body: str
    pretty_body: str
    signature: SignatureCheck


@dataclass
class Delivery:
    key: str  # the event's _id, or the capture's _id for a handshake / heartbeat
    tenant: str
    subscription: str
    endpoint: str | None  # None: the subscription is gone
    kind: str  # event-notification | handshake | heartbeat
    at: str
    status: str  # delivered | pending | failed | held | cancelled
    number: int | None = None
    focus: str | None = None  # "Appointment/a1"
    action: str | None = None
    channel: str | None = None
    tries: int = 0
    next_attempt_at: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)
    payload: str | None = None  # rebuilt for a provider's own endpoint (detail only)

    @property
    def failing(self) -> bool:
        """Failed for good, a try failed and the next one is waiting, or a try failed and
        the endpoint was disabled after its grace period (the event is held for $replay)."""
        return self.status == "failed" or (self.status in ("pending", "held") and self.tries > 0)

    @property
    def state(self) -> str:
        """delivered, waiting (first try not done yet), retrying, failed, held or cancelled."""
        if self.status == "pending":
            return "retrying" if self.tries > 0 else "waiting"
        return self.status

    @property
    def inbox(self) -> bool:
        return self.endpoint == subs.INBOX

    def reason(self, when: Callable[[str], str] = str) -> Message | None:
        """Why it failed, in plain words (None when nothing failed); ``when`` shows an
        instant (the pages show Warsaw time)."""
        if not self.failing and self.status != "cancelled":
            return None
        if self.status == "cancelled":
            return Message("cancelled: the subscription was turned off or removed")
        what = self.last_error or (
            f"HTTP {self.last_status}" if self.last_status is not None else "no answer"
        )
        answer = self.attempts[-1].response.strip() if self.attempts else ""
        if answer:
            what = f"{what} ({answer[:120]})"
        if self.status == "failed" and self.kind != "event-notification":
            return Message("the endpoint did not accept it: {error}", {"error": what})
        if self.status == "failed":
            return Message(
                "not delivered after {tries} tries; the last one: {error}",
                {"tries": self.tries, "error": what},
            )
        if self.status == "held":
            return Message(
                "try {tries} failed: {error}; the endpoint kept failing and was disabled, the "
                "event is kept: $replay or a new handshake (PUT the subscription) resumes",
                {"tries": self.tries, "error": what},
            )
        return Message(
            "try {tries} failed: {error}; next try at {next}",
            {"tries": self.tries, "error": what, "next": when(self.next_attempt_at or "?")},
        )


# --------------------------------------------------------------------------- signatures


def _secrets_of(sub: Document | None) -> list[tuple[str, str]]:
    """``(label, secret)``: the current secret first, then those a rotation keeps for a while."""
    if sub is None:
        return []
    out = []
    for i, s in enumerate(sub.get("secrets") or []):
        label = "current" if i == 0 and s.get("expires") is None else "previous"
        out.append((label, str(s["value"])))
    return out


def check_signature(
    raw_body: str, headers: Mapping[str, str], secrets: Sequence[tuple[str, str]]
) -> SignatureCheck:
    """Verify a kept request as its receiver would (``standardwebhooks.Webhook.verify``).

    The library also refuses a timestamp more than 5 minutes from now: right
    for a receiver, but a kept request only gets older. When that is the one
    objection, the signature is checked on its own with the library's ``sign``
    over the same id, timestamp and body, and the answer says so.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in SIGNED_HEADERS if not lower.get(h)]
    if missing:
        return SignatureCheck(
            False, Message("missing header(s): {names}", {"names": ", ".join(missing)})
        )
    if not secrets:
        return SignatureCheck(
            False,
            Message("the subscription is gone: its secret is not known, nothing to check with"),
        )
    try:
        stamp = datetime.fromtimestamp(int(lower["webhook-timestamp"]), UTC)
    except (ValueError, OverflowError, OSError):
        return SignatureCheck(
            False,
            Message(
                "webhook-timestamp {value!r} is not a Unix time in seconds",
                {"value": lower["webhook-timestamp"]},
            ),
        )
    offered = lower["webhook-signature"].split()
    for label, secret in secrets:
        hook = Webhook(secret)
        try:
            hook.verify(raw_body, dict(headers), json_parse=False)
        except ValueError:
            break  # a malformed signature list (no "version,signature" pair)
        except WebhookVerificationError as exc:
            if "timestamp" not in str(exc):
                continue  # no match for this secret; try the next one
            expected = hook.sign(lower["webhook-id"], stamp, raw_body)
            if any(hmac.compare_digest(expected, sig) for sig in offered):
                age = datetime.now(UTC) - stamp
                return SignatureCheck(
                    True,
                    Message(
                        VALID[label] + "; it was signed {minutes} minutes ago, so a receiver "
                        "would now refuse this very request as a replay (Standard Webhooks "
                        "allows 5 minutes)",
                        {"minutes": int(age.total_seconds() // 60)},
                    ),
                )
            continue
        return SignatureCheck(True, Message(VALID[label]))
    versions = sorted({s.split(",", 1)[0] for s in offered})
    if any("," not in s for s in offered):
        return SignatureCheck(
            False,
            Message('webhook-signature is not a list of "version,signature" pairs'),
        )
    if "v1" not in versions:
        return SignatureCheck(
            False,
            Message(
                "no v1 signature in webhook-signature (found: {versions})",
                {"versions": ", ".join(versions) or "none"},
            ),
        )
    return SignatureCheck(
        False,
        Message(
            "none of the {count} signature(s) matches the subscription's {secrets} secret(s): "
            "the body, webhook-id or webhook-timestamp is not what was signed, or another "
            "secret signed it",
            {"count": len(offered), "secrets": len(secrets)},
        ),
    )


def _pretty(raw: str) -> str:
    try:
        return orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return raw


def _capture(doc: Document, sub: Document | None) -> Capture:
    headers = {str(k): str(v) for k, v in (doc.get("headers") or {}).items()}
    raw = str(doc.get("raw_body") or "")
    return Capture(
        id=doc["_id"],
        at=doc["at"],
        webhook_id=doc.get("webhook_id") or "",
        headers=headers,
        raw_body=raw,
        pretty_body=_pretty(raw),
        signature=check_signature(raw, headers, _secrets_of(sub)),
    )


def _notification_kind(capture_doc: Document) -> str:
    """``handshake`` / ``heartbeat`` / ``event-notification`` from the kept Bundle."""
    try:
        status = capture_doc["body"]["entry"][0]["resource"]
        for p in status.get("parameter") or []:
            if p.get("name") == "type":
                return str(p.get("valueCode"))
    except (KeyError, IndexError, TypeError):
        pass
    return "event-notification"


def _attempt(a: Document) -> Attempt:
    return Attempt(
        at=a["at"],
        attempt=int(a.get("attempt") or 1),
        trigger=str(a.get("trigger") or ""),
        outcome=str(a.get("outcome") or ""),
        status_code=a.get("status_code"),
        latency_ms=float(a.get("latency_ms") or 0.0),
        error=a.get("error"),
        response=str(a.get("response") or ""),
    )


def _from_event(ev: Document, sub: Document | None) -> Delivery:
    return Delivery(
        key=ev["_id"],
        tenant=str(ev.get("tenant") or ""),
        subscription=ev["subscription"],
        endpoint=sub["endpoint"] if sub else None,
        kind="event-notification",
        at=ev["at"],
        status=ev["status"],
        number=int(ev["number"]),
        focus=f"{ev['type']}/{ev['rid']}",
        action=ev.get("action"),
        channel=ev.get("channel"),
        tries=int(ev.get("attempts") or 0),
        next_attempt_at=ev.get("next_attempt_at") if ev["status"] == "pending" else None,
        last_status=ev.get("last_status"),
        last_error=ev.get("last_error"),
    )


async def _subscriptions(store: Store, ids: set[str]) -> dict[str, Document]:
    if not ids:
        return {}
    docs = await store.find(c.SUBSCRIPTIONS, {"_id": {"$in": sorted(ids)}})
    return {d["_id"]: d for d in docs}


async def _attach(
    store: Store, deliveries: list[Delivery], subs_by_id: dict[str, Document]
) -> None:
    """Each event's tries, and what the inbox kept of it (by its webhook-id)."""
    events = [d for d in deliveries if d.number is not None]
    if not events:
        return
    # Only these events' tries and kept requests (the store may hold many more).
    attempts = await store.find(
        c.WEBHOOK_ATTEMPTS,
        {
            "subscription": {"$in": sorted({d.subscription for d in events})},
            "number": {"$in": sorted({d.number for d in events if d.number is not None})},
            "kind": "event",
        },
        sort=[("at", 1), ("seq", 1)],
    )
    tries: dict[tuple[str, int], list[Attempt]] = defaultdict(list)
    for a in attempts:
        tries[(a["subscription"], int(a["number"]))].append(_attempt(a))
    webhook_ids = sorted(f"{d.subscription}-{d.number}" for d in events if d.inbox)
    kept: dict[str, list[Document]] = defaultdict(list)
    if webhook_ids:
        for doc in await store.find(
            c.SANDBOX_INBOX, {"webhook_id": {"$in": webhook_ids}}, sort=[("at", 1)]
        ):
            kept[doc.get("webhook_id") or ""].append(doc)
    for d in events:
        assert d.number is not None
        d.attempts = tries.get((d.subscription, d.number), [])
        if d.inbox:
            sub = subs_by_id.get(d.subscription)
            d.captures = [_capture(k, sub) for k in kept.get(f"{d.subscription}-{d.number}", [])]


# --------------------------------------------------------------------------- reads


async def provider_deliveries(
    store: Store, tenant: str, *, limit: int = LIST_LIMIT, skip: int = 0
) -> list[Delivery]:
    """The provider's deliveries, newest first: its subscriptions' events (with their tries
    and, for ``sandbox:inbox``, the kept requests) and the inbox's handshakes and heartbeats."""
    # Each source's newest ``skip + limit`` cover the merged page.
    enough = skip + limit
    own = await store.find(c.SUBSCRIPTIONS, {"tenant": tenant})
    subs_by_id = {s["_id"]: s for s in own}
    # By subscription: the (subscription, number) index answers it; a subscription's
    # events go with it when it is deleted.
    events = (
        await store.find(
            c.WEBHOOK_EVENTS,
            {"subscription": {"$in": sorted(subs_by_id)}},
            sort=[("at", -1), ("number", -1)],
            limit=enough,
        )
        if subs_by_id
        else []
    )
    deliveries = [_from_event(ev, subs_by_id.get(ev["subscription"])) for ev in events]
    # Handshakes and heartbeats are not events: the inbox is their only record. Their
    # webhook-ids are "hs-..." and "hb-..."; an event's is "<subscription>-<number>" with a
    # hex subscription id, so the range "h" <= id < "i" holds exactly the former.
    others = await store.find(
        c.SANDBOX_INBOX,
        {"tenant": tenant, "webhook_id": {"$gte": "h", "$lt": "i"}},
        sort=[("at", -1)],
        limit=enough,
    )
    for doc in others:
        deliveries.append(_kept(doc, subs_by_id.get(doc["subscription"]), tenant))
    # Handshakes and heartbeats to the provider's own endpoints: their tries are the record.
    own_http = sorted(sid for sid, sub in subs_by_id.items() if sub["endpoint"] != subs.INBOX)
    if own_http:
        tries = await store.find(
            c.WEBHOOK_ATTEMPTS,
            {"subscription": {"$in": own_http}, "kind": {"$in": ["handshake", "heartbeat"]}},
            sort=[("at", -1)],
            limit=enough,
        )
        deliveries += [_from_attempt(a, subs_by_id.get(a["subscription"])) for a in tries]
    deliveries.sort(key=lambda d: (d.at, d.number or 0), reverse=True)
    page = deliveries[skip:enough]
    await _attach(store, page, subs_by_id)
    return page


def _from_attempt(a: Document, sub: Document | None) -> Delivery:
    """A handshake or heartbeat to a provider's own endpoint: one try, its own record."""
    ok = a.get("outcome") == "delivered"
    return Delivery(
        key=a["_id"],
        tenant=str(a.get("tenant") or ""),
        subscription=a["subscription"],
        endpoint=sub["endpoint"] if sub else None,
        kind=str(a.get("kind")),
        at=a["at"],
        status="delivered" if ok else "failed",
        tries=1,
        last_status=a.get("status_code"),
        last_error=a.get("error"),
        attempts=[_attempt(a)],
    )


async def delivery(store: Store, tenant: str, key: str, *, base: str) -> Delivery | None:
    """One delivery of the provider's, with everything known about it; for a provider's
    own endpoint also the payload rebuilt from the kept event (``base``: the public URL)."""
    ev = await store.get(c.WEBHOOK_EVENTS, key)
    if ev is not None and ev.get("tenant") == tenant:
        sub = await store.get(c.SUBSCRIPTIONS, ev["subscription"])
        found = _from_event(ev, sub)
        await _attach(store, [found], {sub["_id"]: sub} if sub else {})
        if sub is not None and not found.inbox:
            found.payload = await _rebuilt_payload(store, sub, ev, base)
        return found
    doc = await store.get(c.SANDBOX_INBOX, key)
    if doc is None:
        tried = await store.get(c.WEBHOOK_ATTEMPTS, key)
        if tried is None or tried.get("tenant") != tenant or tried.get("kind") == "event":
            return None
        return _from_attempt(tried, await store.get(c.SUBSCRIPTIONS, tried["subscription"]))
    if doc.get("tenant") != tenant:
        return None
    kind = _notification_kind(doc)
    if kind == "event-notification":
        # a kept request of an event: the event's delivery, with all its tries
        number = str(doc.get("webhook_id") or "").rsplit("-", 1)[-1]
        if number.isdigit():
            ev = await store.find_one(
                c.WEBHOOK_EVENTS, {"subscription": doc["subscription"], "number": int(number)}
            )
            if ev is not None:
                return await delivery(store, tenant, ev["_id"], base=base)
    return _kept(doc, await store.get(c.SUBSCRIPTIONS, doc["subscription"]), tenant)


def _kept(doc: Document, sub: Document | None, tenant: str) -> Delivery:
    """A request the sandbox inbox kept (a handshake or heartbeat, or an event's copy
    whose event is gone): delivered by one try, the kept request its record."""
    return Delivery(
        key=doc["_id"],
        tenant=tenant,
        subscription=doc["subscription"],
        endpoint=sub["endpoint"] if sub else None,
        kind=_notification_kind(doc),
        at=doc["at"],
        status="delivered",
        tries=1,
        captures=[_capture(doc, sub)],
    )


async def _rebuilt_payload(store: Store, sub: Document, ev: Document, base: str) -> str:
    """The notification Bundle a try of ``ev`` sends (each try has its own Bundle id and
    timestamp), built by the same function the delivery uses."""
    resources: dict[str, Document | None] = {}
    if sub["content"] == "full-resource" and ev.get("action") != "deleted":
        doc = await version_doc(store, ev["tenant"], ev["type"], ev["rid"], int(ev["version"]))
        resources[ev["_id"]] = (doc or {}).get("resource")
    bundle = subs.notification_bundle(
        sub,
        base=base,
        kind="event-notification",
        events_since=int(ev["number"]),
        now=from_store(ev["at"]),
        events=[ev],
        resources=resources,
    )
    return orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode()


async def failing_deliveries(
    store: Store, *, limit: int = FAILING_LIMIT, tenant: str | None = None
) -> list[Delivery]:
    """Events that failed for good or wait for a retry, newest first: every provider's, or
    ``tenant``'s."""
    mine: dict[str, Any] = {} if tenant is None else {"tenant": tenant}
    failed = await store.find(
        c.WEBHOOK_EVENTS, {**mine, "status": "failed"}, sort=[("at", -1)], limit=limit
    )
    retrying = await store.find(
        c.WEBHOOK_EVENTS,
        {**mine, "status": {"$in": ["pending", "held"]}, "attempts": {"$gt": 0}},
        sort=[("at", -1)],
        limit=limit,
    )
    events = sorted(failed + retrying, key=lambda e: (e["at"], e["number"]), reverse=True)[:limit]
    subs_by_id = await _subscriptions(store, {e["subscription"] for e in events})
    found = [_from_event(ev, subs_by_id.get(ev["subscription"])) for ev in events]
    await _attach(store, found, subs_by_id)
    return found


async def refused_handshakes(
    store: Store, tenant: str, *, limit: int = FAILING_LIMIT
) -> list[Delivery]:
    """Handshakes and heartbeats the provider's own endpoints did not accept, newest first."""
    own = await store.find(c.SUBSCRIPTIONS, {"tenant": tenant})
    subs_by_id = {s["_id"]: s for s in own if s["endpoint"] != subs.INBOX}
    if not subs_by_id:
        return []
    tries = await store.find(
        c.WEBHOOK_ATTEMPTS,
        {
            "subscription": {"$in": sorted(subs_by_id)},
            "kind": {"$in": ["handshake", "heartbeat"]},
            "outcome": {"$ne": "delivered"},
        },
        sort=[("at", -1)],
        limit=limit,
    )
    return [_from_attempt(a, subs_by_id.get(a["subscription"])) for a in tries]


async def failing_subscriptions(store: Store) -> list[Document]:
    """Subscriptions in ``error`` (a failed handshake, or an event given up on), with why."""
    return await store.find(c.SUBSCRIPTIONS, {"status": "error"}, sort=[("created", -1)])


@dataclass(frozen=True)
class ProviderRow:
    id: str
    name: str
    client_id: str
    created: str | None
    sandbox: bool
    subscriptions: int
    failing: int


async def providers(store: Store) -> list[ProviderRow]:
    """Every provider (the sample one too), newest first, with its webhook health."""
    docs = await store.find(c.PROVIDERS, {}, sort=[("created", -1)], limit=500)
    rows = []
    for d in docs:
        sub_count = await store.count(c.SUBSCRIPTIONS, {"tenant": d["_id"]})
        failing = 0
        if sub_count:
            failing = await store.count(
                c.WEBHOOK_EVENTS, {"tenant": d["_id"], "status": "failed"}
            ) + await store.count(
                c.WEBHOOK_EVENTS,
                {
                    "tenant": d["_id"],
                    "status": {"$in": ["pending", "held"]},
                    "attempts": {"$gt": 0},
                },
            )
        rows.append(
            ProviderRow(
                id=d["_id"],
                name=str(d.get("name") or d["_id"]),
                client_id=str(d.get("client_id") or ""),
                created=d.get("created"),
                sandbox=bool(d.get("sandbox")),
                subscriptions=sub_count,
                failing=failing,
            )
        )
    return rows
