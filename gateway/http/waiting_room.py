"""The waiting room in the patient channel: ``/patient/v1/waiting-room`` and ``/proposals``.

- ``POST /patient/v1/waiting-room`` ``{scope, referral: {key, code}, criteria, contact}``:
  201 with the entry (R-WAIT-2 by choice); ``criteria`` as in a search
  (R-CRIT-1, R-WAIT-4): ``from``, ``to``, ``weekdays`` (``[1, 2]`` or ``"1,2"``),
  ``hours`` (``"08:00-12:00"``), ``postal_code``, ``city``, ``facility``;
- ``GET /patient/v1/waiting-room`` (``?status=waiting,proposed,...``),
  ``GET /patient/v1/waiting-room/{id}``: entries with ``estimated_date`` and the
  ``estimate`` that explains it (R-WAIT-5);
- ``PATCH /patient/v1/waiting-room/{id}`` ``{criteria?, contact?}``: criteria as a
  JSON merge patch (a field set to ``null`` is dropped); the place in the queue
  stays, the estimate is computed again (R-WAIT-4, R-CRIT-2);
- ``DELETE /patient/v1/waiting-room/{id}``: leave (R-WAIT-6); 200 with the entry;
- ``GET /patient/v1/proposals`` (``?status=open``), ``POST /patient/v1/proposals/{id}/accept``
  (200 with the booked visit), ``POST /patient/v1/proposals/{id}/decline`` (R-CAN-2).

Automatic entry (R-WAIT-2; ``auto_enter_after_booking``, ``auto_enter_after_search``)
is called from ``gateway.http.patient``. Entry commands go to the waiting room's
own partition, proposal answers to the partition of the slot's provider.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import constants as c
from gateway import patients
from gateway import waiting_room as entries
from gateway import waiting_rules as rules
from gateway.errors import FhirError
from gateway.http.keys import SERVICES
from gateway.http.patient import BASE, _body, _pesel, _send
from gateway.http.responses import json_response
from gateway.timeutil import from_store, to_fhir
from mappings import codes

ENTRY_STATUSES = (
    rules.WAITING,
    rules.ASSIGNING,
    rules.PROPOSED,
    rules.ASSIGNED,
    rules.LEFT,
    rules.CLOSED,
)
PROPOSAL_STATUSES = ("open", "accepted", "declined", "expired", "withdrawn", "failed")


def _instant(stored: str | None) -> str | None:
    return to_fhir(from_store(stored)) if stored else None


async def entry_view(request: web.Request, doc: dict[str, Any]) -> dict[str, Any]:
    """What a patient sees of an entry, with its estimate when it is still waiting."""
    services = request.app[SERVICES]
    estimate = None
    if services.waiting is not None:
        estimate = await services.waiting.estimator.of(doc, services.clock.now())
    return {
        "id": doc["_id"],
        "status": doc["status"],
        "scope": doc["scope"],
        "queue": doc["queue"],
        "privileged": bool(doc.get("privileged")),
        "referral": {"key": doc["referral"]["key"]} if doc.get("referral") else None,
        "criteria": (
            doc["criteria_input"]
            if "criteria_input" in doc
            else rules.criteria_view(doc.get("criteria") or {})
        ),
        "contact": doc.get("contact"),
        "channel": doc.get("channel"),
        "entered_at": _instant(doc.get("entered_at")),
        "queued_at": _instant(doc.get("queued_at")),
        "estimated_date": estimate["estimated_date"] if estimate else None,
        "estimate": estimate,
        "proposal_id": doc.get("proposal"),
        "appointment_id": doc.get("appointment"),
        "closed_reason": doc.get("closed_reason"),
        "left_at": _instant(doc.get("left_at")),
    }


async def proposal_view(
    request: web.Request, p: dict[str, Any], directory: patients.Directory
) -> dict[str, Any]:
    store = request.app[SERVICES].store
    slot = await store.get(c.RESOURCES, f"{p['tenant']}/Slot/{p['slot']}")
    return {
        "id": p["_id"],
        "status": p["status"],
        "entry_id": p["entry"],
        "expires_at": _instant(p.get("expires_at")),
        "answered_at": _instant(p.get("answered_at")),
        "slot": await patients.slot_view(directory, slot) if slot else None,
        "appointment_id": p["_id"] if p["status"] == "accepted" else None,
    }


def _criteria_input(scope: str, value: Any) -> dict[str, Any]:
    """Check ``criteria`` as the command will parse it (400 ``invalid`` at once)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise patients.invalid("criteria: an object (from, to, weekdays, hours, ...)")
    try:
        patients.parse_criteria(rules.criteria_query(scope, value))
    except ValueError as exc:
        raise patients.invalid(str(exc)) from exc
    return {k: v for k, v in value.items() if v is not None}


async def _enter(
    request: web.Request,
    pesel: str,
    scope: str,
    referral: dict[str, str] | None,
    criteria: dict[str, Any],
    contact: dict[str, Any] | None,
    channel: str,
) -> dict[str, Any]:
    body = {
        "entry": entries.new_entry_id(),
        "pesel": pesel,
        "scope": scope,
        "referral": referral,
        "criteria": criteria,
        "contact": contact,
        "channel": channel,
    }
    reply = await _send(request, "waiting-room.enter", body, c.WAITING_ROOM_TENANT)
    doc = await entries.own_entry(request.app[SERVICES].store, pesel, reply["entry"])
    return await entry_view(request, doc)


async def create(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    data = await _body(request, {"scope", "referral", "criteria", "contact"})
    scope = data.get("scope")
    if not isinstance(scope, str) or scope not in codes.scopes():
        raise patients.invalid(f"scope: one of {', '.join(codes.scopes())}")
    contact = patients.parse_contact(data.get("contact"))
    view = await _enter(
        request,
        pesel,
        scope,
        patients.parse_referral(data.get("referral")),
        _criteria_input(scope, data.get("criteria")),
        contact.model_dump() if contact else None,
        patients.CHANNEL,
    )
    return json_response(view, 201, headers={"Location": f"{BASE}/waiting-room/{view['id']}"})


def _statuses(request: web.Request, known: tuple[str, ...]) -> list[str]:
    for name in request.query:
        if name != "status":
            raise patients.invalid(f"unknown parameter {name!r}; known: status")
    wanted = [s for s in request.query.get("status", "").split(",") if s]
    bad = [s for s in wanted if s not in known]
    if bad:
        raise patients.invalid(f"status: one or more of {', '.join(known)}")
    return wanted or list(known)


async def list_mine(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    statuses = _statuses(request, ENTRY_STATUSES)
    docs = await request.app[SERVICES].store.find(
        c.WAITING_ROOM,
        {"pesel": pesel, "status": {"$in": statuses}},
        sort=[("entered_at", -1)],
    )
    return json_response({"entries": [await entry_view(request, d) for d in docs]})


async def read_one(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    doc = await entries.own_entry(request.app[SERVICES].store, pesel, request.match_info["id"])
    return json_response(await entry_view(request, doc))


async def patch(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    store = request.app[SERVICES].store
    doc = await entries.own_entry(store, pesel, request.match_info["id"])
    data = await _body(request, {"criteria", "contact"})
    body: dict[str, Any] = {"entry": doc["_id"], "pesel": pesel}
    if "criteria" in data:
        change = data["criteria"]
        if not isinstance(change, dict):
            raise patients.invalid("criteria: an object; a field set to null is dropped")
        merged = {**(doc.get("criteria_input") or {}), **change}
        body["criteria"] = _criteria_input(doc["scope"], merged)
    if "contact" in data:
        contact = patients.parse_contact(data["contact"])
        body["contact"] = contact.model_dump() if contact else None
        patients.require_contact(body["contact"])
    await _send(request, "waiting-room.change", body, c.WAITING_ROOM_TENANT)
    return json_response(
        await entry_view(request, await entries.own_entry(store, pesel, doc["_id"]))
    )


async def delete(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    store = request.app[SERVICES].store
    doc = await entries.own_entry(store, pesel, request.match_info["id"])
    body = {"entry": doc["_id"], "pesel": pesel, "channel": patients.CHANNEL}
    await _send(request, "waiting-room.leave", body, c.WAITING_ROOM_TENANT)
    return json_response(
        await entry_view(request, await entries.own_entry(store, pesel, doc["_id"]))
    )


async def list_proposals(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    statuses = _statuses(request, PROPOSAL_STATUSES)
    store = request.app[SERVICES].store
    docs = await store.find(
        c.WAITING_ROOM_PROPOSALS,
        {"pesel": pesel, "status": {"$in": statuses}},
        sort=[("created_at", -1)],
    )
    directory = patients.Directory(store)
    return json_response({"proposals": [await proposal_view(request, p, directory) for p in docs]})


async def _own_proposal(request: web.Request, pesel: str) -> dict[str, Any]:
    gid = request.match_info["id"]
    p = await request.app[SERVICES].store.get(c.WAITING_ROOM_PROPOSALS, gid)
    if p is None or p.get("pesel") != pesel:
        raise patients.not_found("proposal")
    return p


async def accept(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    p = await _own_proposal(request, pesel)
    reply = await _send(
        request, "waiting-room.accept", {"proposal": p["_id"], "pesel": pesel}, p["tenant"]
    )
    return json_response(reply["appointment"])


async def decline(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    p = await _own_proposal(request, pesel)
    await _send(
        request, "waiting-room.decline", {"proposal": p["_id"], "pesel": pesel}, p["tenant"]
    )
    again = await _own_proposal(request, pesel)
    directory = patients.Directory(request.app[SERVICES].store)
    return json_response(await proposal_view(request, again, directory))


# --------------------------------------------------------------------------- automatic entry


async def auto_enter_after_booking(
    request: web.Request,
    err: FhirError,
    pesel: str,
    tenant: str,
    slot_id: str,
    referral: dict[str, str] | None,
    contact: dict[str, Any] | None,
) -> None:
    """R-WAIT-2, automatically: a booking refused ``outside-booking-window`` in a scope
    with a waiting room, whose facility has no free slot left within the window for
    the patient's e-referral, enters the patient with that facility as the criterion.
    The refusal then carries ``waiting_room_entry`` (the entry, new or the one the
    referral already has). Anything else (no referral, no contact) leaves it as it was.
    """
    if err.code != "outside-booking-window" or "waiting_room" not in err.extra:
        return
    if referral is None or contact is None:
        return
    store = request.app[SERVICES].store
    slot = await store.get(c.RESOURCES, f"{tenant}/Slot/{slot_id}")
    if slot is None or not slot["central"].get("location_id"):
        return
    scope = slot["central"]["scope"]
    facility = f"{tenant}~{slot['central']['location_id']}"
    crit = patients.parse_criteria(
        [("scope", scope), ("facility", facility), ("referral", referral["key"]), ("limit", "1")]
    )
    try:
        page = await patients.search_slots(store, request.app[SERVICES].clock.now(), pesel, crit)
    except FhirError:
        return
    if page["slots"]:
        return  # something is free within the window there: book it
    try:
        view = await _enter(
            request, pesel, scope, referral, {"facility": facility}, contact, "auto-booking"
        )
    except FhirError as refused:
        other = refused.extra.get("entry_id")
        if refused.code != "already-waiting" or not other:
            return
        view = await entry_view(request, await entries.own_entry(store, pesel, other))
    err.extra["waiting_room_entry"] = view
    err.issues[0].diagnostics += "; you are now in the waiting room for this facility (R-WAIT-2)"


async def auto_enter_after_search(
    request: web.Request,
    pesel: str,
    crit: patients.Criteria,
    query: dict[str, str],
    page: dict[str, Any],
) -> None:
    """R-WAIT-2, automatically: a search with ``auto_enter=true`` that finds nothing within
    the window (the answer's ``waiting_room``) enters the patient with the search's
    criteria. It needs the e-referral (``referral``, or the patient's only usable one
    of the scope) and contact data from the patient's latest entry or visit; the answer
    carries ``waiting_room_entry``, or ``waiting_room_auto_enter`` saying what is missing.
    """
    if "waiting_room" not in page:
        return
    store = request.app[SERVICES].store
    refs = await store.find(
        c.REFERRALS,
        {"pesel": pesel, "scope": crit.scope, "status": patients.REFERRAL_ISSUED},
    )
    if crit.referral:
        refs = [r for r in refs if r["_id"] == crit.referral]
    if len(refs) != 1:
        page["waiting_room_auto_enter"] = "referral-required"
        return
    contact = None
    last = await store.find(c.WAITING_ROOM, {"pesel": pesel}, sort=[("entered_at", -1)], limit=1)
    if last and last[0].get("contact"):
        contact = last[0]["contact"]
    else:
        visits = await patients.list_appointments(store, pesel)
        for v in reversed(visits):
            if v.get("contact"):
                contact = v["contact"]
                break
    if contact is None:
        page["waiting_room_auto_enter"] = "contact-required"
        return
    criteria = {
        k: v for k, v in query.items() if k in rules.CRITERIA_FIELDS and v not in (None, "")
    }
    referral = {"key": refs[0]["key"], "code": refs[0]["code"]}
    try:
        page["waiting_room_entry"] = await _enter(
            request, pesel, crit.scope, referral, criteria, contact, "auto-search"
        )
    except FhirError as refused:
        page["waiting_room_auto_enter"] = refused.code
        if refused.extra.get("entry_id"):
            doc = await entries.own_entry(store, pesel, refused.extra["entry_id"])
            page["waiting_room_entry"] = await entry_view(request, doc)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{BASE}/waiting-room", create)
    r.add_get(f"{BASE}/waiting-room", list_mine)
    r.add_get(f"{BASE}/waiting-room/{{id}}", read_one)
    r.add_patch(f"{BASE}/waiting-room/{{id}}", patch)
    r.add_delete(f"{BASE}/waiting-room/{{id}}", delete)
    r.add_get(f"{BASE}/proposals", list_proposals)
    r.add_post(f"{BASE}/proposals/{{id}}/accept", accept)
    r.add_post(f"{BASE}/proposals/{{id}}/decline", decline)
