"""FHIR writes as the worker applies them: one request, a transaction or a batch.

Every provider write is a ``fhir.write`` command carrying a list of operations
(a single PUT/POST/DELETE is a transaction of one). The worker applies a
transaction in three steps:

1. **resolve** conditional creates (``If-None-Exist``): a match turns the entry
   into a no-op on the existing resource and the ids other entries used for it
   are rewritten;
2. **check** every entry against the store and the rest of the bundle
   (versions, references within the tenant, business identifiers, slot holds,
   the booking rules) and collect every problem with its FHIRPath and HTTP
   status; any problem answers an error and nothing is written;
3. **apply** the entries: deletes first (FHIR's transaction order), then the
   other writes in Bundle order, appointments last (their slots exist by then).

Why this is all or nothing without database transactions: commands of one
provider are applied one at a time (their partition has a single active
consumer and the bus keeps a tenant's order), so nothing of that provider
changes between step 2 and 3 except through this command. A crash in step 3
leaves the command unacknowledged; its redelivery re-applies it, and every
write is keyed by ``<message id>/<entry>`` so what was written is not written
twice (``resources.apply_put``). A batch applies each entry on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from gateway import booking, resources, search
from gateway import constants as c
from gateway.errors import FhirError, Issue
from gateway.ports import Document, Store
from gateway.timeutil import to_store
from mappings import appointment as appointment_map
from mappings import codes
from mappings import location as location_map
from mappings import schedule as schedule_map
from mappings import slot as slot_map
from mappings.references import fhir_instant, rewrite_references

MAPPERS: dict[str, Any] = {
    "Location": location_map,
    "Schedule": schedule_map,
    "Slot": slot_map,
    "Appointment": appointment_map,
}


def central_of(rtype: str, resource: dict[str, Any]) -> dict[str, Any]:
    """The central model of a FHIR resource (raises 422 with FHIRPaths)."""
    if rtype == "Slot":  # the model's dump without the model: a Bundle's 500 Slots
        return slot_map.central_dict(resource)
    result: dict[str, Any] = MAPPERS[rtype].to_central(resource).model_dump()
    return result


def ident_key(tenant: str, rtype: str, central: dict[str, Any]) -> str | None:
    """The business-identifier guard: one live resource per first identifier and type."""
    for ident in central.get("identifiers") or []:
        if ident.get("system") and ident.get("value"):
            return f"{tenant}|{rtype}|{ident['system']}|{ident['value']}"
    return None


@dataclass
class Op:
    """One entry: ``method`` PUT, POST or DELETE on ``type/id``."""

    index: int
    method: str
    type: str
    id: str
    resource: dict[str, Any] | None = None
    central: dict[str, Any] | None = None
    if_match: int | None = None
    if_none_exist: str | None = None
    full_url: str | None = None
    # filled while resolving / checking
    existing: Document | None = None  # conditional create matched this
    current: Document | None = None
    problems: list[Issue] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # the HTTP status of each problem
    ident: str | None = field(default="", repr=False)  # "" until ``ident_key`` read it

    def ident_key(self, tenant: str) -> str | None:
        """``ident_key`` of its central model, worked out once (read thrice a write; the
        identifiers do not change once the op is made)."""
        if self.ident == "":
            self.ident = ident_key(tenant, self.type, self.central) if self.central else None
        return self.ident

    def problem(self, status: int, issue: Issue) -> None:
        self.problems.append(issue)
        self.statuses.append(status)

    @property
    def key(self) -> str:
        return f"{self.type}/{self.id}"

    @classmethod
    def from_body(cls, i: int, d: dict[str, Any]) -> Op:
        return cls(
            # A batch sends only the entries the API accepted: ``index`` keeps their
            # place in the Bundle for the FHIRPaths.
            index=int(d.get("index", i)),
            method=d["method"],
            type=d["type"],
            id=d["id"],
            resource=d.get("resource"),
            central=d.get("central"),
            if_match=d.get("if_match"),
            if_none_exist=d.get("if_none_exist"),
            full_url=d.get("full_url"),
        )


@dataclass
class WriteContext:
    store: Store
    now: datetime
    tenant: str
    msg_id: str
    correlation_id: str
    channel: str
    prefix: str  # "Bundle.entry[i].resource" maker, or "" for single requests
    cache: dict[str, Document | None] = field(default_factory=dict)
    planned: dict[str, Op] = field(default_factory=dict)  # "Type/id" -> op in this bundle
    deleting: dict[str, Op] = field(default_factory=dict)  # "Type/id" -> DELETE in this bundle
    idents: dict[str, Op] = field(default_factory=dict)  # business identifier -> op
    claims: dict[str, Op] = field(default_factory=dict)  # slot id -> appointment op holding it
    # Slots this write may book although the waiting room holds them (it is the waiting room).
    take_holds: frozenset[str] = frozenset()
    # Read once per transaction for all entries (``prefetch_holders``): business
    # identifier -> the live resource holding it (absent: nobody holds it).
    holders: dict[str, Document] | None = None

    def where(self, op: Op, expr: str) -> str:
        if not self.prefix:
            return expr
        # "Slot.schedule" -> "Bundle.entry[3].resource.schedule"
        _head, _, rest = expr.partition(".")
        base = f"Bundle.entry[{op.index}].resource"
        return f"{base}.{rest}" if rest else base

    async def get(self, rtype: str, rid: str) -> Document | None:
        key = resources.doc_id(self.tenant, rtype, rid)
        if key not in self.cache:
            doc = await self.store.get(c.RESOURCES, key)
            self.cache[key] = doc if doc is not None and not doc.get("deleted") else None
        return self.cache[key]


async def find_conditional(ctx: WriteContext, op: Op) -> list[Document]:
    """Resources matching an ``If-None-Exist`` query (``identifier`` or ``_id``)."""
    params = parse_qsl(op.if_none_exist or "", keep_blank_values=True)
    if not params:
        raise FhirError(400, [Issue("invalid", "If-None-Exist is empty")])
    flt: dict[str, Any] = {"tenant": ctx.tenant, "type": op.type, "deleted": False}
    for name, value in params:
        if name == "identifier":
            # Any of the resource's identifiers, as the search parameter matches them.
            flt.setdefault("$and", []).append(search.identifier_cond(value))
        elif name == "_id":
            flt["rid"] = value
        else:
            raise FhirError(
                400,
                [
                    Issue(
                        "not-supported",
                        f"If-None-Exist supports identifier and _id, not {name!r}",
                        [f"Bundle.entry[{op.index}].request.ifNoneExist"] if ctx.prefix else [],
                    )
                ],
            )
    return await ctx.store.find(c.RESOURCES, flt, limit=2)


def plain_identifier(op: Op) -> str | None:
    """``system|value`` when ``If-None-Exist`` is exactly ``identifier=system|value``."""
    if op.method != "POST" or not op.if_none_exist:
        return None
    query = op.if_none_exist
    if (
        query.startswith("identifier=")
        and "&" not in query
        and "%" not in query
        and "+" not in query
    ):
        # What parse_qsl gives for a query without escapes, separators or "+" (a
        # vendor's 500 conditional creates a bundle: 500 parses saved).
        value = query[len("identifier=") :]
        system, sep, code = value.partition("|")
        return value if sep and system and code else None
    params = parse_qsl(query, keep_blank_values=True)
    if len(params) != 1 or params[0][0] != "identifier":
        return None
    system, sep, value = params[0][1].partition("|")
    return params[0][1] if sep and system and value else None


async def find_conditionals(ctx: WriteContext, ops: list[Op]) -> dict[int, list[Document]]:
    """The matches of every plain ``identifier=system|value`` conditional create, read
    with one query per resource type instead of one per entry (a vendor's bundle of
    500 slots is 500 of them); keyed by ``id(op)``. The others are left out."""
    wanted: dict[str, dict[str, list[Op]]] = {}  # type -> identifier -> ops
    for op in ops:
        key = plain_identifier(op)
        if key is not None:
            wanted.setdefault(op.type, {}).setdefault(key, []).append(op)
    out: dict[int, list[Document]] = {}
    for rtype, by_key in wanted.items():
        flt = {
            "tenant": ctx.tenant,
            "type": rtype,
            "deleted": False,
            "ident_keys": {"$in": list(by_key)},
        }
        found: dict[str, list[Document]] = {}
        for doc in await ctx.store.find(c.RESOURCES, flt):
            for key in doc.get("ident_keys") or []:
                if key in by_key:
                    found.setdefault(key, []).append(doc)
        for key, key_ops in by_key.items():
            for op in key_ops:
                out[id(op)] = found.get(key, [])
    return out


async def resolve(ctx: WriteContext, ops: list[Op]) -> None:
    """Step 1: conditional creates; rewrite the ids other entries used for matches."""
    renamed: dict[str, str] = {}
    known = await find_conditionals(ctx, ops)
    for op in ops:
        if op.method == "POST" and op.if_none_exist:
            found = known[id(op)] if id(op) in known else await find_conditional(ctx, op)
            if len(found) > 1:
                op.problem(
                    412,
                    Issue("multiple-matches", "If-None-Exist matches more than one resource"),
                )
            elif found:
                op.existing = found[0]
                renamed[op.key] = f"{op.type}/{found[0]['rid']}"
                op.id = found[0]["rid"]
    if renamed:
        for op in ops:
            if op.resource is not None and op.existing is None:
                op.resource = rewrite_references(op.resource, renamed)
                op.central = central_of(op.type, op.resource)
    for op in ops:
        if op.existing is not None:
            continue
        if op.key in ctx.planned or op.key in ctx.deleting:
            op.problem(400, Issue("duplicate", f"{op.key} appears twice in one transaction"))
        if op.method == "DELETE":
            ctx.deleting[op.key] = op
        else:
            ctx.planned[op.key] = op


async def referenced(ctx: WriteContext, rtype: str, rid: str) -> dict[str, Any] | None:
    """The central model of a resource, from this bundle or from the store."""
    found = await referenced_both(ctx, rtype, rid)
    return found[0] if found is not None else None


async def referenced_both(
    ctx: WriteContext, rtype: str, rid: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(central, FHIR resource)`` of a resource, from this bundle or from the store."""
    key = f"{rtype}/{rid}"
    if key in ctx.deleting:
        return None
    op = ctx.planned.get(key)
    if op is not None:
        if op.existing is not None:
            return op.existing["central"], op.existing["resource"]
        if op.central is None or op.resource is None:
            return None
        return op.central, op.resource
    doc = await ctx.get(rtype, rid)
    return (doc["central"], doc["resource"]) if doc is not None else None


async def check(ctx: WriteContext, op: Op) -> None:
    """Step 2: everything that can be known before writing; problems, not exceptions."""
    if op.existing is not None:
        return
    op.current = await ctx.get(op.type, op.id)
    if op.if_match is not None:
        current_version = op.current["version"] if op.current else None
        if current_version != op.if_match:
            op.problem(
                412,
                Issue(
                    "conflict",
                    f"If-Match asks for version {op.if_match}, the current version is "
                    f"{current_version}",
                ),
            )
    if op.method == "DELETE":
        await check_delete(ctx, op)
        return
    assert op.central is not None
    central = op.central
    await check_identifier(ctx, op, central)
    if op.type == "Schedule":
        loc = await referenced(ctx, "Location", central["location_id"])
        if loc is None:
            op.problem(
                422,
                Issue(
                    "not-found",
                    f"Location/{central['location_id']} does not exist for this provider",
                    [ctx.where(op, "Schedule.actor")],
                ),
            )
    elif op.type == "Slot":
        await check_slot(ctx, op, central)
    elif op.type == "Appointment":
        await check_appointment(ctx, op, central)


async def check_identifier(ctx: WriteContext, op: Op, central: dict[str, Any]) -> None:
    """One live resource per business identifier and type (the unique ``ident_key``).

    Checked here, not only by the store's unique index when writing, so that a
    transaction fails before anything of it is written.
    """
    key = op.ident_key(ctx.tenant)
    if key is None:
        return
    other = ctx.idents.get(key)
    if other is not None:
        op.problem(
            400,
            Issue(
                "duplicate",
                f"the identifier is also on Bundle.entry[{other.index}]: one resource per "
                "business identifier",
                [ctx.where(op, f"{op.type}.identifier[0]")],
            ),
        )
        return
    ctx.idents[key] = op
    if ctx.holders is not None:
        holder = ctx.holders.get(key)
    else:
        holder = await ctx.store.find_one(c.RESOURCES, {"ident_key": key})
    if holder is None or holder["rid"] == op.id or f"{op.type}/{holder['rid']}" in ctx.deleting:
        return
    op.problem(
        409,
        Issue(
            "duplicate",
            f"{op.type}/{holder['rid']} already has this identifier; update that one, or use "
            "If-None-Exist for a conditional create",
            [ctx.where(op, f"{op.type}.identifier[0]")],
        ),
    )


async def prefetch_holders(ctx: WriteContext, ops: list[Op]) -> None:
    """Who holds each entry's business identifier, in one query for the transaction.

    Read after ``resolve`` and before any check; nothing of the provider changes
    until this command's writes (see the module docstring), so it is what
    ``check_identifier`` would have read entry by entry.
    """
    keys = {
        key
        for op in ops
        if op.existing is None and op.central is not None
        for key in [op.ident_key(ctx.tenant)]
        if key is not None
    }
    holders: dict[str, Document] = {}
    if keys:
        for doc in await ctx.store.find(c.RESOURCES, {"ident_key": {"$in": sorted(keys)}}):
            holders[doc["ident_key"]] = doc
    ctx.holders = holders


@dataclass
class BatchHolders:
    """Who holds each business identifier a batch's entries carry, read once for the
    batch (``by_key``: ident key -> ``{"rid"}``), then updated as each entry is written
    so that a later entry sees what an earlier one did, as a read would."""

    by_key: dict[str, Document]
    by_resource: dict[str, str]  # "Type/id" -> the ident key it holds

    @classmethod
    async def read(cls, ctx: WriteContext, ops: list[Op]) -> BatchHolders | None:
        if len(ops) < 2:
            return None
        await prefetch_holders(ctx, ops)
        found, ctx.holders = ctx.holders or {}, None
        by_key = {k: {"rid": d["rid"]} for k, d in found.items()}
        by_resource = {f"{d['type']}/{d['rid']}": k for k, d in found.items()}
        return cls(by_key, by_resource)

    def written(self, ctx: WriteContext, op: Op) -> None:
        if op.existing is not None:
            return  # a conditional create that matched: nothing written
        old = self.by_resource.pop(op.key, None)
        if old is not None and self.by_key.get(old, {}).get("rid") == op.id:
            del self.by_key[old]
        if op.method == "DELETE" or op.central is None:
            return
        new = op.ident_key(ctx.tenant)
        if new is not None:
            self.by_key[new] = {"rid": op.id}
            self.by_resource[op.key] = new


async def check_slot(ctx: WriteContext, op: Op, central: dict[str, Any]) -> None:
    schedule = await referenced(ctx, "Schedule", central["schedule_id"])
    if schedule is None:
        op.problem(
            422,
            Issue(
                "not-found",
                f"Schedule/{central['schedule_id']} does not exist for this provider",
                [ctx.where(op, "Slot.schedule")],
            ),
        )
        return
    if central["scope"] not in schedule.get("scopes", []):
        op.problem(
            422,
            Issue(
                "business-rule",
                f"the slot's scope {central['scope']!r} is not a scope of its schedule "
                f"({', '.join(schedule.get('scopes', []))})",
                [ctx.where(op, "Slot.serviceType")],
            ),
        )
    loc = await referenced(ctx, "Location", schedule["location_id"]) or {}
    # Denormalised for the patients' location criteria (R-CRIT-1).
    central["location_id"] = schedule["location_id"]
    central["postal_code"] = loc.get("postal_code")
    central["city"] = loc.get("city")
    before = op.current["central"] if op.current else {}
    holder = before.get("appointment_id")
    central["appointment_id"] = holder
    if not holder:
        return
    # A held slot changes only through its appointment (R-SCHED-4): the vendor may
    # not free it, close it or move it behind the booking's back.
    if central["status"] != "busy":
        op.problem(
            409,
            Issue(
                "conflict",
                f"the slot holds Appointment/{holder}, so its status stays busy; cancel the "
                "appointment (status=cancelled with a cancelationReason) to free it",
                [ctx.where(op, "Slot.status")],
            ),
        )
    for name in ("start", "end"):
        if central[name] != before.get(name):
            op.problem(
                409,
                Issue(
                    "conflict",
                    f"the slot holds Appointment/{holder}: its {name} cannot change; cancel "
                    "the appointment or move it to another slot first",
                    [ctx.where(op, f"Slot.{name}")],
                ),
            )


# Booking channels a provider's system may declare on a new Appointment (the
# booking-channel extension): its own, the manual-entry page and the initial import.
# The patient channels (portal, sms, waiting-room) are recorded only by the gateway
# when the booking really comes that way: the payer counts them (R-SCOPE-3).
PROVIDER_DECLARABLE_CHANNELS = frozenset({"provider", "manual", "import"})


def check_channel(ctx: WriteContext, op: Op, central: dict[str, Any]) -> None:
    claimed = central.get("channel")
    if (
        op.current is None
        and ctx.channel == "provider"
        and claimed
        and claimed not in PROVIDER_DECLARABLE_CHANNELS
    ):
        op.problem(
            422,
            Issue(
                "business-rule",
                f"booking-channel {claimed!r} is recorded by the gateway for bookings made "
                "there; a provider system declares provider, manual or import",
                [ctx.where(op, "Appointment.extension")],
            ),
        )


def record_booking(ctx: WriteContext, central: dict[str, Any], previous: Document | None) -> None:
    """Who booked and cancelled, and when: fixed when it happens, kept on later updates.

    The booking channel and time are the first booking's (a provider's later PUT of
    a visit booked in IKP does not make it a provider booking); the cancellation's
    channel is the one the cancellation came through (SMS vs portal, R-CAN-4).
    """
    if previous is not None and previous.get("channel"):
        central["channel"] = previous["channel"]
    elif ctx.channel != "provider":
        central["channel"] = ctx.channel
    else:
        central["channel"] = central.get("channel") or ctx.channel
    was_holding = previous is not None and previous.get("status") in booking.HOLDING
    if previous is not None and previous.get("booked_at"):
        central["booked_at"] = previous["booked_at"]
    elif central["status"] in booking.HOLDING and not was_holding:
        central["booked_at"] = to_store(ctx.now)
    was_cancelled = previous is not None and previous.get("status") == "cancelled"
    if central["status"] == "cancelled":
        if was_cancelled and previous is not None:
            central["cancel_channel"] = previous.get("cancel_channel")
        else:
            central["cancel_channel"] = ctx.channel
            central["cancelled_at"] = central.get("cancelled_at") or to_store(ctx.now)


async def check_appointment(ctx: WriteContext, op: Op, central: dict[str, Any]) -> None:
    check_channel(ctx, op, central)
    if not central["slot_ids"]:
        return
    holds = central["status"] in booking.HOLDING
    sid = central["slot_ids"][0]
    found = await referenced_both(ctx, "Slot", sid)
    where = ctx.where(op, "Appointment.slot[0]")
    if found is None:
        if holds:
            op.problem(
                422, Issue("not-found", f"Slot/{sid} does not exist for this provider", [where])
            )
        return
    slot, slot_resource = found
    if holds and len(central["slot_ids"]) > 1:
        # Only one slot is held per appointment: a second one would stay free for others.
        op.problem(
            422,
            Issue(
                "not-supported",
                "a booked appointment references one slot; book a longer visit as one slot",
                [ctx.where(op, "Appointment.slot[1]")],
            ),
        )
        return
    if holds:
        holder = slot.get("appointment_id")
        claimed = ctx.claims.get(sid)
        if claimed is not None and claimed is not op:
            op.problem(
                409,
                Issue(
                    "conflict",
                    f"Slot/{sid} is no longer free: Bundle.entry[{claimed.index}] books it",
                    [where],
                ),
            )
            return
        bookable = slot.get("status") in booking.BOOKABLE_SLOT_STATUSES or (
            sid in ctx.take_holds and booking.is_held(slot)
        )
        if holder not in (None, op.id) or not bookable:
            op.problem(
                409,
                Issue(
                    "conflict",
                    f"Slot/{sid} is no longer free"
                    + (f": it holds Appointment/{holder}" if holder else ""),
                    [where],
                ),
            )
            return
        ctx.claims[sid] = op
    copy_from_slot(op, central, slot, slot_resource)
    if not holds:
        return
    if slot.get("category") == "first-privileged" and not central.get("privileged"):
        op.problem(
            422,
            Issue(
                "business-rule",
                "a first-privileged slot is for a patient whose out-of-turn entitlement the "
                "facility verified: mark the appointment privileged (R-PAT-5)",
                [where],
            ),
        )
    if central["scope"] != slot.get("scope"):
        op.problem(
            422,
            Issue(
                "business-rule",
                f"the appointment's scope {central['scope']!r} differs from its slot's "
                f"({slot.get('scope')!r})",
                [ctx.where(op, "Appointment.serviceType")],
            ),
        )
    if central["category"] != slot.get("category"):
        op.problem(
            422,
            Issue(
                "business-rule",
                f"the appointment's category {central['category']!r} differs from its slot's "
                f"({slot.get('category')!r})",
                [ctx.where(op, "Appointment.appointmentType")],
            ),
        )
    for name in ("start", "end"):
        if central[name] != slot.get(name):
            op.problem(
                422,
                Issue(
                    "business-rule",
                    f"the appointment's {name} differs from its slot's "
                    f"({fhir_instant(slot[name])}); leave it out to take the slot's",
                    [ctx.where(op, f"Appointment.{name}")],
                ),
            )
    if (
        central["status"] in appointment_map.REFERRAL_CHECKED
        and central.get("referral") is None
        and central["scope"]
        and codes.referral_required(central["scope"], central["category"])
    ):
        op.problem(
            422,
            Issue(
                "required",
                f"a first-time {central['scope']} visit needs an e-referral (R-PAT-2): "
                f"basedOn.identifier with system {codes.E_REFERRAL_SYSTEM} and value KEY:CODE",
                [ctx.where(op, "Appointment.basedOn")],
            ),
        )


def copy_from_slot(
    op: Op, central: dict[str, Any], slot: dict[str, Any], slot_resource: dict[str, Any]
) -> None:
    """What the appointment leaves out is taken from its slot, in the central model and
    in the stored resource (R4 app-3: a booked appointment has start and end), with the
    slot's own offsets."""
    assert op.resource is not None
    resource = dict(op.resource)
    if not central.get("start") and not central.get("end") and slot.get("start"):
        central["start"], central["end"] = slot["start"], slot["end"]
        resource["start"] = slot_resource.get("start") or fhir_instant(slot["start"])
        resource["end"] = slot_resource.get("end") or fhir_instant(slot["end"])
    if not central.get("scope") and slot.get("scope"):
        central["scope"] = slot["scope"]
        resource["serviceType"] = [
            *(resource.get("serviceType") or []),
            {"coding": [codes.coding(codes.SCOPE_SYSTEM, slot["scope"])]},
        ]
    if not central.get("category") and slot.get("category"):
        central["category"] = slot["category"]
        cc = dict(resource.get("appointmentType") or {})
        cc["coding"] = [
            *(cc.get("coding") or []),
            codes.coding(codes.SLOT_CATEGORY_SYSTEM, slot["category"]),
        ]
        resource["appointmentType"] = cc
    op.resource = resource


async def check_delete(ctx: WriteContext, op: Op) -> None:
    if op.current is None:
        return
    # A DELETE entry has no resource: its problems are the entry's.
    where = [f"Bundle.entry[{op.index}]"] if ctx.prefix else []
    current = op.current["central"]
    if op.type == "Slot" and current.get("appointment_id"):
        op.problem(
            409,
            Issue(
                "conflict",
                f"the slot holds Appointment/{current['appointment_id']}; cancel it first",
                where,
            ),
        )
    elif (
        op.type == "Appointment"
        and current.get("status") in booking.HOLDING
        and current.get("slot_ids")
    ):
        op.problem(
            409,
            Issue(
                "conflict",
                f"the appointment holds Slot/{current['slot_ids'][0]}: cancel it first "
                "(status=cancelled with a cancelationReason, R-CAN-1), then delete it",
                where,
            ),
        )
    elif op.type in ("Schedule", "Location"):
        child, field_name = (
            ("Slot", "schedule_id") if op.type == "Schedule" else ("Schedule", "location_id")
        )
        flt: dict[str, Any] = {
            "tenant": ctx.tenant,
            "type": child,
            "deleted": False,
            f"central.{field_name}": op.id,
        }
        going = [k.split("/", 1)[1] for k in ctx.deleting if k.startswith(f"{child}/")]
        if going:
            flt["rid"] = {"$nin": going}
        n = await ctx.store.count(c.RESOURCES, flt)
        if n:
            op.problem(
                409,
                Issue("conflict", f"{n} {child}(s) still reference {op.type}/{op.id}", where),
            )


async def apply(ctx: WriteContext, op: Op) -> dict[str, Any]:
    """Step 3: write one entry; returns its ``Bundle.entry.response``-like result."""
    sub = f"{ctx.msg_id}/{op.index}"
    if op.existing is not None:
        doc = op.existing
        return result(
            200, op.type, doc["rid"], doc["version"], doc["last_updated"], doc["resource"]
        )
    if op.method == "DELETE":
        version = await resources.apply_delete(
            ctx.store,
            now=ctx.now,
            tenant=ctx.tenant,
            rtype=op.type,
            rid=op.id,
            msg_id=sub,
            correlation_id=ctx.correlation_id,
            channel=ctx.channel,
        )
        ctx.cache.pop(resources.doc_id(ctx.tenant, op.type, op.id), None)  # gone now
        return {"status": 204 if version is not None else 404, "type": op.type, "id": op.id}
    assert op.resource is not None and op.central is not None
    previous = op.current["central"] if op.current else None
    if op.type == "Appointment":
        record_booking(ctx, op.central, previous)
        await apply_appointment_holds(ctx, op, previous, sub)
    written = await resources.apply_put(
        ctx.store,
        now=ctx.now,
        tenant=ctx.tenant,
        rtype=op.type,
        rid=op.id,
        resource=op.resource,
        central=op.central,
        if_match=None,  # checked in step 2; order is guaranteed per provider
        msg_id=sub,
        correlation_id=ctx.correlation_id,
        ident_key=op.ident_key(ctx.tenant),
        channel=ctx.channel,
        # What step 2 read (a deleted one reads as absent there: read it again).
        current=op.current if op.current is not None else resources.UNREAD,
    )
    ctx.cache.pop(resources.doc_id(ctx.tenant, op.type, op.id), None)
    if previous is not None and op.type in ("Location", "Schedule") and written.changed:
        await propagate_location(ctx, op, previous)
        ctx.cache.clear()  # the slots it changed may be cached
    out = result(
        written.status, op.type, op.id, written.version, written.last_updated, written.resource
    )
    if not written.changed:
        out["unchanged"] = True  # the import's summary counts these apart
    return out


async def propagate_location(ctx: WriteContext, op: Op, previous: dict[str, Any]) -> None:
    """Keep the slots' copy of their facility's address current (R-CRIT-1).

    A slot carries its Location's id, postal code and city (``check_slot``) for
    the patients' search across providers; when a Location's address or a
    Schedule's Location changes, its slots' copies change with it. Derived data
    of the central model only: the slots' FHIR resources and versions stay.
    """
    assert op.central is not None
    if op.type == "Location":
        new = {"postal_code": op.central.get("postal_code"), "city": op.central.get("city")}
        if all(previous.get(k) == v for k, v in new.items()):
            return
        flt: dict[str, Any] = {"central.location_id": op.id}
    else:
        if previous.get("location_id") == op.central["location_id"]:
            return
        loc = await referenced(ctx, "Location", op.central["location_id"]) or {}
        new = {
            "location_id": op.central["location_id"],
            "postal_code": loc.get("postal_code"),
            "city": loc.get("city"),
        }
        flt = {"central.schedule_id": op.id}
    await ctx.store.update_many(
        c.RESOURCES,
        {"tenant": ctx.tenant, "type": "Slot", **flt},
        {"$set": {f"central.{k}": v for k, v in new.items()}},
    )


async def apply_appointment_holds(
    ctx: WriteContext, op: Op, previous: dict[str, Any] | None, sub: str
) -> None:
    """Take the new slot and free the old one, as the appointment's status says."""
    assert op.central is not None
    new_slot = (
        op.central["slot_ids"][0]
        if op.central["status"] in booking.HOLDING and op.central["slot_ids"]
        else None
    )
    old_slot = (
        previous["slot_ids"][0]
        if previous and previous["status"] in booking.HOLDING and previous["slot_ids"]
        else None
    )
    if new_slot and new_slot != old_slot:
        key = resources.doc_id(ctx.tenant, "Slot", new_slot)
        # What step 2 read (hold_slot reads again unless it shows the slot free to take).
        known = ctx.cache.pop(key, None)
        await booking.hold_slot(
            ctx.store,
            now=ctx.now,
            tenant=ctx.tenant,
            slot_id=new_slot,
            appointment_id=op.id,
            msg_id=f"{sub}/hold",
            correlation_id=ctx.correlation_id,
            channel=ctx.channel,
            expression=ctx.where(op, "Appointment.slot[0]"),
            take_hold=new_slot in ctx.take_holds,
            known=known,
        )
    if old_slot and old_slot != new_slot:
        ctx.cache.pop(resources.doc_id(ctx.tenant, "Slot", old_slot), None)
        if op.central["status"] == "cancelled" and not op.central.get("cancelled_at"):
            op.central["cancelled_at"] = to_store(ctx.now)
        await booking.release_slot(
            ctx.store,
            now=ctx.now,
            tenant=ctx.tenant,
            slot_id=old_slot,
            appointment_id=op.id,
            msg_id=f"{sub}/release",
            correlation_id=ctx.correlation_id,
            channel=ctx.channel,
            reason=op.central.get("cancel_reason"),
        )


def result(
    status: int,
    rtype: str,
    rid: str,
    version: int,
    last_updated: str,
    resource: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "status": status,
        "type": rtype,
        "id": rid,
        "version": version,
        "last_updated": last_updated,
        "resource": resource,
    }


# When a transaction has problems of several kinds, the answer's status is the first
# of these that occurs: a malformed request before a version mismatch before a conflict.
STATUS_ORDER = (400, 412, 409, 422)


def problems_error(ops: list[Op], bundle: bool) -> FhirError:
    issues: list[Issue] = []
    statuses: set[int] = set()
    for op in ops:
        for issue, status in zip(op.problems, op.statuses, strict=True):
            if not issue.expression and bundle:
                issue.expression = [f"Bundle.entry[{op.index}]"]
            issues.append(issue)
            statuses.add(status)
    status = next((s for s in STATUS_ORDER if s in statuses), 422)
    code = {
        409: "slot-taken" if any("no longer free" in i.diagnostics for i in issues) else "conflict",
        412: "version-mismatch",
        400: "invalid",
    }.get(status, "business-rule")
    return FhirError(status, issues, code=code)


def apply_order(ops: list[Op]) -> list[Op]:
    """Deletes first (FHIR's transaction order), then the other writes, appointments last,
    so that an appointment's slot is written before the appointment takes it."""

    def rank(op: Op) -> int:
        if op.method == "DELETE":
            return 0
        return 2 if op.type == "Appointment" else 1

    return sorted(ops, key=lambda op: (rank(op), op.index))


async def run_write(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    msg_id: str,
    correlation_id: str,
    mode: str,
    ops_body: list[dict[str, Any]],
    channel: str = "provider",
    representation: bool = True,
    progress: Callable[[int], Awaitable[None]] | None = None,
    take_holds: frozenset[str] = frozenset(),
    known: Mapping[str, Document] = MappingProxyType({}),
) -> dict[str, Any]:
    """Apply a ``fhir.write`` command; the reply lists one result per entry.

    Without ``representation`` the results leave the resources out (a big
    transaction's reply stays small); ``progress`` is told every 100 entries.
    ``take_holds``: slots the waiting room holds that this write may book
    (``booking.is_held``; only the waiting room passes them). ``known``: resources
    the caller has just read (store id -> document), not read again.
    """
    bundle = mode in ("transaction", "batch")
    ops = [Op.from_body(i, d) for i, d in enumerate(ops_body)]
    ctx = WriteContext(
        store,
        now,
        tenant,
        msg_id,
        correlation_id,
        channel,
        prefix="bundle" if bundle else "",
        take_holds=take_holds,
        cache={k: v for k, v in known.items() if not v.get("deleted")},
    )
    if mode == "batch":
        results: list[dict[str, Any]] = []
        # Each entry is checked and applied on its own, but reads are shared: what the
        # store holds (``ctx.cache``, kept current by ``apply``) and who holds each
        # business identifier (``BatchHolders``: one query for the batch instead of one
        # per entry, then kept current entry by entry).
        holders = await BatchHolders.read(ctx, ops)
        for n, op in enumerate(ops, 1):
            # The entry's own plan (references, deletes, identifiers, claims), the
            # batch's shared reads.
            one = replace(
                ctx,
                planned={},
                deleting={},
                idents={},
                claims={},
                holders=holders.by_key if holders else None,
            )
            try:
                await resolve(one, [op])
                await check(one, op)
                if op.problems:
                    raise problems_error([op], True)
            except FhirError as err:
                results.append(err.to_reply())
            else:
                try:
                    results.append(await apply(one, op))
                except FhirError as err:
                    # Something may be half written: read again from now on.
                    ctx.cache.clear()
                    holders = None
                    results.append(err.to_reply())
                else:
                    if holders is not None:
                        holders.written(ctx, op)
            if progress is not None and n % 100 == 0:
                await progress(n)
        if not representation:
            for r in results:
                r.pop("resource", None)
        return {"mode": mode, "results": results}
    await resolve(ctx, ops)
    if len(ops) > 1:
        await prefetch_holders(ctx, ops)
    for op in ops:
        await check(ctx, op)
    if any(op.problems for op in ops):
        raise problems_error(ops, bundle)
    if len(ops) == 1:
        results = [await apply(ctx, ops[0])]  # a single write: nothing to order
    else:
        by_op: dict[int, dict[str, Any]] = {}
        for n, op in enumerate(apply_order(ops), 1):
            by_op[id(op)] = await apply(ctx, op)
            if progress is not None and n % 100 == 0:
                await progress(n)
        results = [by_op[id(op)] for op in ops]
    if not representation:
        for r in results:
            r.pop("resource", None)
    return {"mode": mode, "results": results}
