"""Booking on behalf of a patient, a visit's page, and cancellation with a reason.

A booking is a FHIR ``Appointment`` (status ``booked``, the slot, the patient's PESEL,
contact data, the e-referral where needed, the out-of-turn entitlement the facility
verified) with the booking channel ``manual``; a cancellation is a ``PUT`` of the
visit with ``status=cancelled`` and a reason from the fixed list (R-CAN-1), with
``If-Match`` on the version the page showed. Both go through the same command as the
FHIR API, so the booking rules, the slot release (R-CAN-2), the notifications and the
provider's webhooks follow as for any other booking.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import pesel as pesel_rules
from gateway.errors import FhirError, Issue
from gateway.http.ui import core, forms, i18n, plain, writes
from gateway.http.ui.calendar import cancel_channel, labels_for
from gateway.timeutil import WARSAW, from_store
from mappings import appointment as appointment_map
from mappings import codes

# Where a booking's issues go. The extensions are written in this order (see build).
BOOK_FIELDS = {
    "Appointment.participant": "pesel",
    "Appointment.basedOn": "referral_key",
    "Appointment.extension[1]": "phone",
    "Appointment.extension[2]": "email",
}
CANCEL_FIELDS = {"Appointment.cancelationReason": "reason"}
# Reasons a facility gives at the desk or on the phone: its own and the patient's
# (the SMS reply and the central system's reasons are recorded by the gateway).
CANCEL_REASONS_EXCLUDED = {"patient-sms"}


def _display(info: Any, lang: str) -> str:
    return str(info.display_pl if lang == "pl" else info.display_en)


def slot_facts(slot: dict[str, Any], lang: str) -> dict[str, Any]:
    central = slot["central"]
    category = central.get("category")
    start = from_store(central["start"]).astimezone(WARSAW)
    end = from_store(central["end"]).astimezone(WARSAW)
    return {
        "rid": slot["rid"],
        "day": start.date().isoformat(),
        "time": f"{start:%H:%M}\N{EN DASH}{end:%H:%M}",
        "scope": _display(codes.scopes()[central["scope"]], lang),
        "category": _display(codes.slot_categories()[category], lang) if category else "",
        "category_code": category,
        "needs_referral": codes.referral_required(central["scope"], category),
        "privileged_only": category == "first-privileged",
        "free": central["status"] == "free",
    }


def build_appointment(form: forms.Form, slot_id: str) -> dict[str, Any]:
    """The FHIR Appointment of a booking form (after its checks)."""
    extensions: list[dict[str, Any]] = [
        {
            "url": codes.EXT_BOOKING_CHANNEL,
            "valueCoding": codes.coding(codes.APPOINTMENT_CHANNEL_SYSTEM, "manual"),
        },
        # phone at [1] and e-mail at [2] (BOOK_FIELDS); an empty one is dropped below
        {
            "url": codes.EXT_PATIENT_CONTACT,
            "valueContactPoint": {"system": "phone", "value": form.get("phone")},
        },
        {
            "url": codes.EXT_PATIENT_CONTACT,
            "valueContactPoint": {"system": "email", "value": form.get("email")},
        },
        {"url": codes.EXT_PRIVILEGED, "valueBoolean": form.get("privileged") == "on"},
    ]
    if not form.get("email"):
        extensions.pop(2)
    if not form.get("phone"):
        extensions.pop(1)
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "status": "booked",
        "extension": extensions,
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "participant": [
            {
                "actor": {
                    "type": "Patient",
                    "identifier": {"system": codes.PESEL_SYSTEM, "value": form.get("pesel")},
                },
                "required": "required",
                "status": "accepted",
            }
        ],
    }
    if form.get("referral_key") or form.get("referral_code"):
        resource["basedOn"] = [
            {
                "identifier": {
                    "system": codes.E_REFERRAL_SYSTEM,
                    "value": f"{form.get('referral_key')}:{form.get('referral_code')}",
                }
            }
        ]
    return resource


def check_booking(form: forms.Form, facts: dict[str, Any], _: i18n.Translate) -> None:
    """What the page checks before sending: the PESEL (DOMAIN.md Identifiers/PESEL),
    contact data (R-PAT-7), the e-referral (R-PAT-2) and the entitlement (R-PAT-5)."""
    form.values["pesel"] = "".join(form.get("pesel").split())
    if not form.get("pesel"):
        form.error("pesel", _("Enter the patient's PESEL."))
    else:
        try:
            pesel_rules.validate(form.get("pesel"))
        except ValueError as exc:
            form.error("pesel", plain.plain(_issue(str(exc)), _))
    if not form.get("phone") and not form.get("email"):
        form.error(
            "phone",
            _("Enter a phone number or an e-mail address: confirmations and reminders go there."),
        )
    key, code = form.get("referral_key"), form.get("referral_code")
    if facts["needs_referral"] and not (key or code):
        form.error(
            "referral_key",
            _(
                "A first-time visit in this scope needs an e-referral: enter its key and "
                "4-digit code."
            ),
        )
    elif key or code:
        try:
            appointment_map.parse_referral(f"{key}:{code}")
        except ValueError as exc:
            field = "referral_code" if "code" in str(exc) and key else "referral_key"
            form.error(field, plain.plain(_issue(str(exc)), _))
    if facts["privileged_only"] and form.get("privileged") != "on":
        form.error(
            "privileged",
            _(
                "This slot is for privileged patients: confirm that you checked the patient's "
                "out-of-turn entitlement."
            ),
        )


def _issue(message: str) -> Issue:
    return Issue("value", message)


async def _slot(request: web.Request, tenant: str) -> dict[str, Any]:
    return await writes.current(request, tenant, "Slot", request.match_info["id"])


async def book_page(request: web.Request, form: forms.Form | None = None) -> web.Response:
    me = await core.signed_in(request)
    lang = i18n.language(request)
    slot = await _slot(request, me["_id"])
    return await core.render(
        request,
        "book.html",
        {"slot": slot_facts(slot, lang), "form": form or forms.Form()},
        status=400 if form is not None else 200,
    )


async def book(request: web.Request) -> web.Response:
    me = await core.signed_in(request)
    lang = i18n.language(request)
    _ = i18n.translator(lang)
    slot = await _slot(request, me["_id"])
    facts = slot_facts(slot, lang)
    form = await forms.read_form(request)
    check_booking(form, facts, _)
    if form.ok:
        try:
            result = await writes.create(
                request, me["_id"], "Appointment", build_appointment(form, slot["rid"])
            )
        except FhirError as err:
            forms.fhir_error_to_form(form, err, BOOK_FIELDS, plain.translator_for(_))
        else:
            await core.flash(
                request, _("Booked: {day} {time}.", day=facts["day"], time=facts["time"])
            )
            raise core.see_other(f"/ui/appointments/{result['id']}")
    return await book_page(request, form)


def cancel_reasons(lang: str) -> list[tuple[str, str]]:
    return [("", "—")] + [
        (code, _display(info, lang))
        for code, info in codes.cancellation_reasons().items()
        if info.by in ("patient", "provider") and code not in CANCEL_REASONS_EXCLUDED
    ]


async def appointment_page(request: web.Request, form: forms.Form | None = None) -> web.Response:
    me = await core.signed_in(request)
    lang = i18n.language(request)
    doc = await writes.current(request, me["_id"], "Appointment", request.match_info["id"])
    central = doc["central"]

    def disp(table: dict[str, Any], code: str | None) -> str:
        return _display(table[code], lang) if code and code in table else ""

    _ = i18n.translator(lang)
    statuses = {
        "proposed": _("proposed"),
        "pending": _("pending"),
        "booked": _("booked"),
        "arrived": _("arrived"),
        "fulfilled": _("fulfilled"),
        "cancelled": _("visit cancelled"),
        "noshow": _("no-show"),
        "entered-in-error": _("entered in error"),
        "checked-in": _("checked in"),
        "waitlist": _("in the waiting room"),
    }
    start = from_store(central["start"]).astimezone(WARSAW) if central.get("start") else None
    contact = central.get("contact") or {}
    visit = {
        "rid": doc["rid"],
        "version": doc["version"],
        "status": statuses.get(central["status"], central["status"]),
        "when": f"{start:%Y-%m-%d %H:%M}" if start else "",
        "day": start.date().isoformat() if start else "",
        "scope": disp(codes.scopes(), central.get("scope")),
        "category": disp(codes.slot_categories(), central.get("category")),
        "pesel": central.get("patient_pesel"),
        "phone": contact.get("phone"),
        "email": contact.get("email"),
        "referral": (central.get("referral") or {}).get("key"),
        "privileged": central.get("privileged"),
        "channel": disp(codes.channels(), central.get("channel")),
        "cancel_reason": disp(codes.cancellation_reasons(), central.get("cancel_reason")),
        "cancel_note": central.get("cancel_note"),
        "cancel_channel": cancel_channel(central.get("cancel_channel"), labels_for(lang), _),
        "cancellable": central["status"] in ("booked", "pending", "arrived", "checked-in"),
    }
    return await core.render(
        request,
        "appointment.html",
        {
            "visit": visit,
            "form": form or forms.Form(values={"version": str(doc["version"])}),
            "reasons": cancel_reasons(lang),
        },
        status=400 if form is not None else 200,
    )


async def cancel(request: web.Request) -> web.Response:
    me = await core.signed_in(request)
    _ = i18n.gettext(request)
    rid = request.match_info["id"]
    doc = await writes.current(request, me["_id"], "Appointment", rid)
    form = await forms.read_form(request)
    reason = form.get("reason")
    allowed = {code for code, _label in cancel_reasons("en") if code}
    if reason not in allowed:
        form.error("reason", _("Choose the reason for the cancellation."))
    elif reason == "other" and not form.get("note"):
        form.error("note", _("Describe the reason: you chose Other."))
    if len(form.get("note")) > 500:
        form.error("note", _("At most 500 characters."))
    version = int(form.get("version")) if form.get("version").isdigit() else None
    if form.ok:
        resource = writes.editable(doc["resource"])
        resource["status"] = "cancelled"
        resource["cancelationReason"] = {
            "coding": [codes.coding(codes.CANCELLATION_REASON_SYSTEM, reason)]
        }
        if form.get("note"):
            resource["cancelationReason"]["text"] = form.get("note")
        try:
            await writes.update(request, me["_id"], "Appointment", rid, resource, version)
        except FhirError as err:
            forms.fhir_error_to_form(form, err, CANCEL_FIELDS, plain.translator_for(_))
        else:
            await core.flash(request, _("The visit was cancelled and its slot released."))
            raise core.see_other(f"/ui/appointments/{rid}")
    return await appointment_page(request, form)


async def availability(request: web.Request) -> web.Response:
    """Withdraw a free slot (``busy-unavailable``: the facility will not hold it) or
    make a withdrawn one free again: a ``PUT`` of the Slot with ``If-Match``."""
    me = await core.signed_in(request)
    _ = i18n.gettext(request)
    slot = await _slot(request, me["_id"])
    form = await forms.read_form(request)
    back = core.safe_next(form.get("back"), f"/ui/day?date={slot_facts(slot, 'en')['day']}")
    target = {"unavailable": "busy-unavailable", "free": "free"}.get(form.get("to"))
    current = slot["central"]["status"]
    version = int(form.get("version")) if form.get("version").isdigit() else None
    if target is None or current not in ("free", "busy-unavailable") or current == target:
        await core.flash(request, _("The slot has changed meanwhile: look at it again."))
        raise core.see_other(back)
    resource = writes.editable(slot["resource"])
    resource["status"] = target
    try:
        await writes.update(request, me["_id"], "Slot", slot["rid"], resource, version)
    except FhirError as err:
        await core.flash(request, plain.plain(err.issues[0], _))
    else:
        facts = slot_facts(slot, i18n.language(request))
        when = f"{facts['day']} {facts['time']}"
        await core.flash(
            request,
            _("The slot {when} was withdrawn.", when=when)
            if target != "free"
            else _("The slot {when} is free again.", when=when),
        )
    raise core.see_other(back)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ui/slots/{id}/book", book_page)
    r.add_post("/ui/slots/{id}/book", book)
    r.add_post("/ui/slots/{id}/availability", availability)
    r.add_get("/ui/appointments/{id}", appointment_page)
    r.add_post("/ui/appointments/{id}/cancel", cancel)
