"""The patient channel (IKP-like): JSON over ``/patient/v1``, errors as problem+json.

Handlers parse, then read the store (search, lists) or send a command to the
partition of the slot's provider and await its reply (request/reply), as the
FHIR API does for providers. The rules are ``gateway.patients``.

- ``GET /patient/v1/slots``: free slots the patient may book, earliest first,
  paged by ``limit`` (1-100, default 20) and ``cursor`` (the previous page's
  ``next_cursor``);
- ``POST /patient/v1/appointments`` ``{slot_id, referral?, contact}``: 201; beyond the
  window of a scope with a waiting room the patient may be entered automatically
  (R-WAIT-2, ``gateway.http.waiting_room``);
- ``GET /patient/v1/appointments`` (optional ``status=booked,cancelled``) and
  ``GET /patient/v1/appointments/{id}``;
- ``POST /patient/v1/appointments/{id}/cancel`` ``{reason}``;
- ``POST /patient/v1/appointments/{id}/reschedule`` ``{slot_id, contact?, referral?}``.

Ids are global: ``<provider id>~<resource id>``. Another patient's id is 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import constants as c
from gateway import patients, resources
from gateway.errors import FhirError
from gateway.events import command, new_id
from gateway.http.auth import principal
from gateway.http.keys import CORRELATION_ID, SERVICES
from gateway.http.responses import json_response
from gateway.ports import RequestTimeout
from mappings.validation import parse_json

BASE = "/patient/v1"
MAX_BODY = 16 * 1024


def _pesel(request: web.Request) -> str:
    return principal(request, "patient").subject


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise patients.invalid(f"the body is larger than {MAX_BODY} bytes")
    if not raw:
        raise patients.invalid("send a JSON object")
    try:
        data = parse_json(raw)
    except FhirError as err:
        raise patients.invalid(err.issues[0].diagnostics if err.issues else "bad JSON") from err
    if not isinstance(data, dict):
        raise patients.invalid("send a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise patients.invalid(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
    return data


def _slot_id(value: Any) -> tuple[str, str]:
    parts = patients.split_id(value) if isinstance(value, str) else None
    if parts is None:
        raise patients.invalid("slot_id: the id of a slot from GET /patient/v1/slots")
    return parts


async def _slot_open(request: web.Request, tenant: str, slot: str) -> None:
    """Answer a slot that is plainly gone or taken at once (the worker checks again)."""
    store = request.app[SERVICES].store
    patients.check_slot_open(await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot)))


async def _send(
    request: web.Request, kind: str, body: dict[str, Any], tenant: str
) -> dict[str, Any]:
    """Send a patient command to the provider's partition and await its reply."""
    services = request.app[SERVICES]
    msg = command(
        kind,
        body,
        tenant=tenant,
        correlation_id=request[CORRELATION_ID],
        now=services.clock.now(),
    )
    services.metrics.published("command")
    try:
        reply = await services.bus.request(msg, services.settings.command_timeout_seconds)
    except RequestTimeout as exc:
        raise patients.problem(
            503,
            "timeout",
            "the request is queued but was not applied in time; look at your appointments later",
            "timeout",
        ) from exc
    if "error" in reply:
        raise FhirError.from_reply(reply["error"])
    return reply


async def search(request: web.Request) -> web.Response:
    """``auto_enter=true``: nothing found within the window enters the waiting room with
    these criteria (R-WAIT-2, ``gateway.http.waiting_room.auto_enter_after_search``)."""
    from gateway.http import waiting_room

    pesel = _pesel(request)
    auto = request.query.get("auto_enter", "").lower()
    if auto not in ("", "true", "false"):
        raise patients.invalid("auto_enter: true or false")
    crit = patients.parse_criteria((k, v) for k, v in request.query.items() if k != "auto_enter")
    services = request.app[SERVICES]
    page = await patients.search_slots(services.store, services.clock.now(), pesel, crit)
    if auto == "true":
        await waiting_room.auto_enter_after_search(request, pesel, crit, dict(request.query), page)
    return json_response(page)


async def book(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    data = await _body(request, {"slot_id", "referral", "contact"})
    tenant, slot = _slot_id(data.get("slot_id"))
    contact = patients.parse_contact(data.get("contact"))
    referral = patients.parse_referral(data.get("referral"))
    contact_data = contact.model_dump() if contact else None
    await _slot_open(request, tenant, slot)
    body = {
        "pesel": pesel,
        "slot": slot,
        "appointment": f"ikp-{new_id()}",
        "referral": referral,
        "contact": contact_data,
    }
    try:
        reply = await _send(request, "patient.book", body, tenant)
    except FhirError as err:
        # R-WAIT-2: beyond the window, the waiting room may take the patient in.
        from gateway.http import waiting_room

        await waiting_room.auto_enter_after_booking(
            request, err, pesel, tenant, slot, referral, contact_data
        )
        raise
    appt = reply["appointment"]
    return json_response(appt, 201, headers={"Location": f"{BASE}/appointments/{appt['id']}"})


async def list_mine(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    statuses: tuple[str, ...] | list[str] = patients.LISTED
    for name in request.query:
        if name != "status":
            raise patients.invalid(f"unknown parameter {name!r}; known: status")
    if request.query.get("status"):
        statuses = [s for s in request.query["status"].split(",") if s]
        bad = [s for s in statuses if s not in patients.LISTED]
        if bad:
            raise patients.invalid(f"status: one or more of {', '.join(patients.LISTED)}")
    found = await patients.list_appointments(request.app[SERVICES].store, pesel, statuses)
    return json_response({"appointments": found})


async def read_one(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    store = request.app[SERVICES].store
    doc = await patients.own_appointment(store, pesel, request.match_info["id"])
    view = await patients.appointment_view(store, patients.Directory(store), doc)
    return json_response(view)


async def cancel(request: web.Request) -> web.Response:
    pesel = _pesel(request)
    store = request.app[SERVICES].store
    doc = await patients.own_appointment(store, pesel, request.match_info["id"])
    data = await _body(request, {"reason"})
    reason = patients.check_cancel_reason(data.get("reason"))
    body = {"pesel": pesel, "appointment": doc["rid"], "reason": reason}
    reply = await _send(request, "patient.cancel", body, doc["tenant"])
    return json_response(reply["appointment"])


async def reschedule(request: web.Request) -> web.Response:
    """Cancel + book as one step (R-PAT-9): if the new booking fails the old one stays.

    Within one provider it is one command (one transaction in its partition).
    Across providers the new booking is made first in the new provider's
    partition (it takes over the referral and the screening report), and only
    then is the old visit cancelled in its own provider's partition, with the
    reason ``patient-rescheduled``.
    """
    pesel = _pesel(request)
    store = request.app[SERVICES].store
    gid = request.match_info["id"]
    old = await patients.own_appointment(store, pesel, gid)
    data = await _body(request, {"slot_id", "contact", "referral"})
    tenant, slot = _slot_id(data.get("slot_id"))
    contact = patients.parse_contact(data.get("contact"))
    referral = patients.parse_referral(data.get("referral"))
    await _slot_open(request, tenant, slot)
    body = {
        "pesel": pesel,
        "slot": slot,
        "appointment": f"ikp-{new_id()}",
        "replaces": patients.global_id(old["tenant"], old["rid"]),
        "referral": referral,
        "contact": contact.model_dump() if contact else None,
    }
    reply = await _send(request, "patient.reschedule", body, tenant)
    if "replaced" not in reply:
        try:
            cancelled = await _send(
                request,
                "patient.cancel",
                {"pesel": pesel, "appointment": old["rid"], "reason": "patient-rescheduled"},
                old["tenant"],
            )
            reply["replaced"] = cancelled["appointment"]
        except FhirError:
            # The new visit is booked; the old one changed meanwhile (the facility
            # cancelled it, or the cancellation is still queued): show it as it is.
            now_doc = await patients.own_appointment(store, pesel, gid)
            reply["replaced"] = await patients.appointment_view(
                store, patients.Directory(store), now_doc
            )
    appt = reply["appointment"]
    return json_response(
        {**appt, "replaced": reply["replaced"]},
        201,
        headers={"Location": f"{BASE}/appointments/{appt['id']}"},
    )


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{BASE}/slots", search)
    r.add_post(f"{BASE}/appointments", book)
    r.add_get(f"{BASE}/appointments", list_mine)
    r.add_get(f"{BASE}/appointments/{{id}}", read_one)
    r.add_post(f"{BASE}/appointments/{{id}}/cancel", cancel)
    r.add_post(f"{BASE}/appointments/{{id}}/reschedule", reschedule)
