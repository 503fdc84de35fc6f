"""Appointment (*wizyta*; also a waiting-room entry, status ``waitlist``) <-> central model.

Where things are on the wire (ARCHITECTURE.md "Codes" fixes the first four):
- the patient: ``participant.actor.identifier`` with the PESEL system
  (``urn:oid:2.16.840.1.113883.3.4424.1.1.616``), checked with ``gateway.pesel``;
- the e-referral (*e-skierowanie*): ``basedOn.identifier`` with system
  ``http://cer-gateway.org/fhir/sid/e-referral`` and value ``KEY:CODE`` (KEY 1-44
  ASCII letters/digits, CODE exactly 4 digits);
- the cancellation reason: ``cancelationReason`` (one "l" in R4) coded from
  ``http://cer-gateway.org/fhir/CodeSystem/cancellation-reason``, required when
  ``status`` is ``cancelled`` (R-CAN-1); its ``text`` is kept as a note;
- scope and slot category: ``serviceType`` / ``appointmentType`` as on Slot;
  both optional (the worker takes them from the slot);
- the slots: ``slot`` references ``Slot/<id>``; at least one for a visit that
  is pending, booked, arrived, checked-in or fulfilled;
- ``start`` / ``end``: optional (copied from the slot by the worker, so that
  the stored resource meets R4's app-3), but both or neither (app-2) and
  ``start < end``;
- ``requestedPeriod``: a waiting patient's acceptable windows (R-WAIT-4);
- extensions (ours): ``booking-channel`` (valueCoding of
  ``http://cer-gateway.org/fhir/CodeSystem/appointment-channel``; default
  ``provider``), ``patient-contact`` (valueContactPoint, phone/sms or email,
  R-PAT-7), ``privileged`` (valueBoolean: out-of-turn entitlement verified by
  the facility, R-PAT-5; defaults to true on a ``first-privileged`` visit) and
  R5's cross-version ``extension-Appointment.cancellationDate`` (valueDateTime).

A first-time visit whose scope needs a referral (R-PAT-2) is refused without
one when scope and category are both on the resource; otherwise the booking
rules check it once the slot is known. Contact data (R-PAT-7) are a booking
rule, checked where the channel is known, not here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from gateway import pesel as pesel_rules
from gateway.errors import FhirError, Issue
from gateway.model import CentralAppointment, CentralContact, CentralPeriod, CentralReferral
from mappings import codes
from mappings.references import (
    fhir_instant,
    read_identifiers,
    read_instant,
    read_period,
    read_reference,
    store_or_none,
    write_identifiers,
)

# A visit's start and end as FHIR text, by their stored text: visits share the starts of
# their slots, and the parse and format were half of ``to_fhir`` (the waiting room's
# nightly unlock books thousands of them).
_visit_instant = lru_cache(maxsize=4096)(fhir_instant)

STATUSES = (
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
)
SLOT_REQUIRED = ("pending", "booked", "arrived", "checked-in", "fulfilled")
REFERRAL_CHECKED = ("pending", "booked", "arrived", "checked-in", "fulfilled", "waitlist")
REFERRAL_KEY_MAX = 44
PHONE_RE = re.compile(r"\+?[0-9]{9,15}")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE_SEPARATORS = re.compile(r"[\s\-().]")


# The Appointment's fields this mapping reads as lists, and as text.
LIST_FIELDS = ("identifier", "extension", "participant", "slot", "serviceType", "basedOn")
TEXT_FIELDS = ("comment",)


def _shape(res: dict[str, Any], issues: list[Issue]) -> dict[str, Any]:
    """``res`` without the fields of the wrong JSON type, each one an issue (fhir.resources
    refuses such input before the API maps it; a direct caller gets the 422 too)."""
    wrong = [
        (f, "a list") for f in LIST_FIELDS if res.get(f) is not None and type(res[f]) is not list
    ] + [(f, "text") for f in TEXT_FIELDS if res.get(f) is not None and type(res[f]) is not str]
    if not wrong:
        return res
    for f, kind in wrong:
        issues.append(Issue("structure", f"{f} must be {kind}", [f"Appointment.{f}"]))
    bad = {f for f, _ in wrong}
    return {k: v for k, v in res.items() if k not in bad}


def to_central(res: dict[str, Any]) -> CentralAppointment:
    """FHIR Appointment -> central; raises ``FhirError(422)`` listing every issue found."""
    issues: list[Issue] = []
    res = _shape(res, issues)

    status = res.get("status")
    if status is None:
        issues.append(Issue("required", "status is required", ["Appointment.status"]))
    elif status not in STATUSES:
        issues.append(
            Issue(
                "code-invalid",
                f"status must be one of {', '.join(STATUSES)}",
                ["Appointment.status"],
            )
        )

    slot_ids: list[str] = []
    for i, ref in enumerate(res.get("slot") or []):
        sid = read_reference(ref, "Slot", f"Appointment.slot[{i}]", issues)
        if sid is not None and sid not in slot_ids:
            slot_ids.append(sid)
    if not res.get("slot") and status in SLOT_REQUIRED:
        issues.append(
            Issue(
                "required",
                f"a {status} appointment references its slot (Slot/<id>)",
                ["Appointment.slot"],
            )
        )

    start = read_instant(res.get("start"), "Appointment.start", issues)
    end = read_instant(res.get("end"), "Appointment.end", issues)
    has_start, has_end = res.get("start") is not None, res.get("end") is not None
    if has_start != has_end:
        missing = "Appointment.end" if has_start else "Appointment.start"
        issues.append(
            Issue("invariant", "start and end go together: give both or neither", [missing])
        )
    if start is not None and end is not None and not start < end:
        issues.append(
            Issue("invariant", "the appointment must end after it starts", ["Appointment.end"])
        )

    patient = _read_patient(res.get("participant") or [], issues)
    referral, referral_seen = _read_referral(res.get("basedOn") or [], issues)
    scope = _read_scope(res.get("serviceType") or [], issues)
    category, _ = codes.read_code(
        res.get("appointmentType"),
        codes.SLOT_CATEGORY_SYSTEM,
        codes.slot_categories(),
        "Appointment.appointmentType",
        issues,
        "slot category",
    )

    reason_cc = res.get("cancelationReason")
    reason, reason_seen = codes.read_code(
        reason_cc,
        codes.CANCELLATION_REASON_SYSTEM,
        codes.cancellation_reasons(),
        "Appointment.cancelationReason",
        issues,
        "cancellation reason",
    )
    if status == "cancelled" and reason is None and not reason_seen:
        where = "Appointment.cancelationReason" + (".coding" if reason_cc else "")
        issues.append(
            Issue(
                "required",
                "a cancellation carries a reason from the fixed list (R-CAN-1): "
                f"cancelationReason coded from {codes.CANCELLATION_REASON_SYSTEM}",
                [where],
            )
        )
    note = reason_cc.get("text") if isinstance(reason_cc, dict) else None

    ext = _read_extensions(res.get("extension") or [], issues)

    if (
        scope is not None
        and status in REFERRAL_CHECKED
        and referral is None
        and not referral_seen
        and codes.referral_required(scope, category)
    ):
        issues.append(
            Issue(
                "required",
                f"a first-time {scope} visit needs an e-referral (R-PAT-2): basedOn.identifier "
                f"with system {codes.E_REFERRAL_SYSTEM} and value KEY:CODE",
                ["Appointment.basedOn"],
            )
        )

    periods: list[CentralPeriod] = []
    for i, p in enumerate(res.get("requestedPeriod") or []):
        p_start, p_end = read_period(p, f"Appointment.requestedPeriod[{i}]", issues)
        periods.append(CentralPeriod(start=store_or_none(p_start), end=store_or_none(p_end)))

    if issues or status is None or patient is None:
        raise FhirError(422, issues)
    privileged = ext.privileged if ext.privileged is not None else category == "first-privileged"
    return CentralAppointment(
        status=status,
        slot_ids=slot_ids,
        start=store_or_none(start),
        end=store_or_none(end),
        scope=scope,
        category=category,
        patient_pesel=patient,
        referral=referral,
        cancel_reason=reason,
        cancel_note=note,
        cancelled_at=store_or_none(ext.cancelled_at),
        channel=ext.channel or "provider",
        contact=ext.contact,
        privileged=privileged,
        requested_period=periods,
        comment=res.get("comment"),
        identifiers=read_identifiers(res),
    )


def to_fhir(rid: str, central: CentralAppointment) -> dict[str, Any]:
    """Central -> FHIR Appointment (the shape we generate when no vendor original exists,
    e.g. a visit booked in IKP and pushed to the provider, R-SCHED-4)."""
    # The model's fields as ``to_fhir_dict`` reads them: a model keeps its field values
    # in ``__dict__`` (the nested models' likewise), no dump needed.
    fields = dict(central.__dict__)
    if central.contact is not None:
        fields["contact"] = central.contact.__dict__
    if central.referral is not None:
        fields["referral"] = central.referral.__dict__
    fields["requested_period"] = [p.__dict__ for p in central.requested_period]
    return to_fhir_dict(rid, fields)


def to_fhir_dict(rid: str, central: Mapping[str, Any]) -> dict[str, Any]:
    """``to_fhir`` of the central model as a dict (``CentralAppointment.model_dump()``):
    for callers that build the dump without the model (the waiting room's bookings)."""
    out: dict[str, Any] = {"resourceType": "Appointment", "id": rid}
    extensions: list[dict[str, Any]] = [
        {
            "url": codes.EXT_BOOKING_CHANNEL,
            "valueCoding": codes.coding(codes.APPOINTMENT_CHANNEL_SYSTEM, central["channel"]),
        }
    ]
    if central["privileged"]:
        extensions.append({"url": codes.EXT_PRIVILEGED, "valueBoolean": True})
    contact = central["contact"]
    if contact is not None:
        if contact["phone"]:
            extensions.append(
                {
                    "url": codes.EXT_PATIENT_CONTACT,
                    "valueContactPoint": {"system": "phone", "value": contact["phone"]},
                }
            )
        if contact["email"]:
            extensions.append(
                {
                    "url": codes.EXT_PATIENT_CONTACT,
                    "valueContactPoint": {"system": "email", "value": contact["email"]},
                }
            )
    if central["cancelled_at"]:
        extensions.append(
            {
                "url": codes.EXT_CANCELLATION_DATE,
                "valueDateTime": fhir_instant(central["cancelled_at"]),
            }
        )
    out["extension"] = extensions
    if central["identifiers"]:
        out["identifier"] = write_identifiers(central["identifiers"])
    out["status"] = central["status"]
    cancel_reason, cancel_note = central["cancel_reason"], central["cancel_note"]
    if cancel_reason or cancel_note:
        reason: dict[str, Any] = {}
        if cancel_reason:
            reason["coding"] = [codes.coding(codes.CANCELLATION_REASON_SYSTEM, cancel_reason)]
        if cancel_note:
            reason["text"] = cancel_note
        out["cancelationReason"] = reason
    if central["scope"]:
        out["serviceType"] = [{"coding": [codes.coding(codes.SCOPE_SYSTEM, central["scope"])]}]
    if central["category"]:
        out["appointmentType"] = {
            "coding": [codes.coding(codes.SLOT_CATEGORY_SYSTEM, central["category"])]
        }
    if central["start"]:
        out["start"] = _visit_instant(central["start"])
    if central["end"]:
        out["end"] = _visit_instant(central["end"])
    if central["slot_ids"]:
        out["slot"] = [{"reference": f"Slot/{sid}"} for sid in central["slot_ids"]]
    if central["comment"]:
        out["comment"] = central["comment"]
    referral = central["referral"]
    if referral is not None:
        out["basedOn"] = [
            {
                "identifier": {
                    "system": codes.E_REFERRAL_SYSTEM,
                    "value": f"{referral['key']}:{referral['code']}",
                }
            }
        ]
    waiting = central["status"] in ("proposed", "pending", "waitlist")
    out["participant"] = [
        {
            "actor": {
                "type": "Patient",
                "identifier": {"system": codes.PESEL_SYSTEM, "value": central["patient_pesel"]},
            },
            "required": "required",
            "status": "needs-action" if waiting else "accepted",
        }
    ]
    if central["requested_period"]:
        periods = []
        for p in central["requested_period"]:
            period: dict[str, str] = {}
            if p["start"]:
                period["start"] = fhir_instant(p["start"])
            if p["end"]:
                period["end"] = fhir_instant(p["end"])
            periods.append(period)
        out["requestedPeriod"] = periods
    return out


def parse_referral(value: Any) -> CentralReferral:
    """``KEY:CODE`` -> ``CentralReferral``; ``ValueError`` saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise ValueError("the e-referral identifier value must be KEY:CODE")
    parts = value.split(":")
    if len(parts) != 2:
        raise ValueError("the e-referral identifier value must be KEY:CODE (one colon)")
    key, code = parts
    if not key or not (key.isascii() and key.isalnum()) or len(key) > REFERRAL_KEY_MAX:
        raise ValueError(
            f"the e-referral key must be 1-{REFERRAL_KEY_MAX} letters or digits (A-Z, a-z, 0-9)"
        )
    if not (len(code) == 4 and code.isascii() and code.isdigit()):
        raise ValueError("the e-referral code must be exactly 4 digits")
    return CentralReferral(key=key, code=code)


def _read_patient(participants: list[Any], issues: list[Issue]) -> str | None:
    found: str | None = None
    seen = False
    for i, p in enumerate(participants):
        actor = p.get("actor") if isinstance(p, dict) else None
        ident = actor.get("identifier") if isinstance(actor, dict) else None
        if not isinstance(ident, dict) or ident.get("system") != codes.PESEL_SYSTEM:
            continue
        where = f"Appointment.participant[{i}].actor.identifier.value"
        if seen:
            issues.append(
                Issue("value", "an appointment has one patient (one PESEL participant)", [where])
            )
            continue
        seen = True
        value = ident.get("value")
        if not isinstance(value, str):
            issues.append(Issue("required", "the patient's PESEL is missing", [where]))
            continue
        try:
            pesel_rules.validate(value)
        except ValueError as exc:
            issues.append(Issue("value", str(exc), [where]))
            continue
        found = value
    if not seen:
        issues.append(
            Issue(
                "required",
                "the patient is a participant whose actor.identifier has the PESEL system "
                f"({codes.PESEL_SYSTEM})",
                ["Appointment.participant"],
            )
        )
    return found


def _read_referral(based_on: list[Any], issues: list[Issue]) -> tuple[CentralReferral | None, bool]:
    found: CentralReferral | None = None
    seen = False
    for i, ref in enumerate(based_on):
        ident = ref.get("identifier") if isinstance(ref, dict) else None
        if not isinstance(ident, dict) or ident.get("system") != codes.E_REFERRAL_SYSTEM:
            continue
        where = f"Appointment.basedOn[{i}].identifier.value"
        if seen:
            issues.append(Issue("value", "a visit is based on one e-referral", [where]))
            continue
        seen = True
        try:
            found = parse_referral(ident.get("value"))
        except ValueError as exc:
            issues.append(Issue("value", str(exc), [where]))
    return found, seen


def _read_scope(service_types: list[Any], issues: list[Issue]) -> str | None:
    found: list[str] = []
    for i, cc in enumerate(service_types):
        scope = codes.read_scope(cc, f"Appointment.serviceType[{i}]", issues)
        if scope is not None and scope not in found:
            found.append(scope)
    if len(found) > 1:
        issues.append(
            Issue(
                "value",
                f"a visit belongs to one scope; serviceType names {', '.join(found)}",
                ["Appointment.serviceType"],
            )
        )
        return None
    return found[0] if found else None


class _Extensions:
    def __init__(self) -> None:
        self.channel: str | None = None
        self.privileged: bool | None = None
        self.cancelled_at: datetime | None = None
        self.contact: CentralContact | None = None


def _read_extensions(extensions: list[Any], issues: list[Issue]) -> _Extensions:
    out = _Extensions()
    phone: str | None = None
    email: str | None = None
    for i, ext in enumerate(extensions):
        if not isinstance(ext, dict):
            continue
        url = ext.get("url")
        path = f"Appointment.extension[{i}]"
        if url == codes.EXT_BOOKING_CHANNEL:
            value = ext.get("valueCoding")
            where = f"{path}.valueCoding"
            code = value.get("code") if isinstance(value, dict) else None
            if (
                not isinstance(value, dict)
                or value.get("system") != codes.APPOINTMENT_CHANNEL_SYSTEM
            ):
                issues.append(
                    Issue(
                        "code-invalid",
                        "booking-channel takes a valueCoding of "
                        + codes.APPOINTMENT_CHANNEL_SYSTEM,
                        [where],
                    )
                )
            elif code not in codes.channels():
                issues.append(
                    Issue(
                        "code-invalid",
                        f"unknown booking channel {code!r}; known: {', '.join(codes.channels())}",
                        [f"{where}.code"],
                    )
                )
            elif out.channel is not None and out.channel != code:
                issues.append(Issue("value", "more than one booking channel", [where]))
            else:
                out.channel = code
        elif url == codes.EXT_PRIVILEGED:
            value = ext.get("valueBoolean")
            if not isinstance(value, bool):
                issues.append(
                    Issue("value", "privileged takes a valueBoolean", [f"{path}.valueBoolean"])
                )
            else:
                out.privileged = value
        elif url == codes.EXT_CANCELLATION_DATE:
            out.cancelled_at = read_instant(
                ext.get("valueDateTime"), f"{path}.valueDateTime", issues
            )
        elif url == codes.EXT_PATIENT_CONTACT:
            kind, value = _read_contact_point(ext.get("valueContactPoint"), path, issues)
            if kind == "phone":
                if phone is not None and phone != value:
                    issues.append(
                        Issue("value", "one phone number per visit", [f"{path}.valueContactPoint"])
                    )
                phone = value
            elif kind == "email":
                if email is not None and email != value:
                    issues.append(
                        Issue("value", "one e-mail per visit", [f"{path}.valueContactPoint"])
                    )
                email = value
    if phone is not None or email is not None:
        out.contact = CentralContact(phone=phone, email=email)
    return out


def _read_contact_point(
    value: Any, path: str, issues: list[Issue]
) -> tuple[str | None, str | None]:
    where = f"{path}.valueContactPoint"
    if not isinstance(value, dict):
        issues.append(Issue("required", "patient-contact takes a valueContactPoint", [where]))
        return None, None
    system, text = value.get("system"), value.get("value")
    if system not in ("phone", "sms", "email"):
        issues.append(
            Issue(
                "code-invalid",
                "a patient contact is a phone (or sms) or an email",
                [f"{where}.system"],
            )
        )
        return None, None
    if not isinstance(text, str) or not text.strip():
        issues.append(Issue("required", "the contact point needs a value", [f"{where}.value"]))
        return None, None
    if system == "email":
        text = text.strip()
        if not EMAIL_RE.fullmatch(text):
            issues.append(Issue("value", "not an e-mail address", [f"{where}.value"]))
            return None, None
        return "email", text
    number = _PHONE_SEPARATORS.sub("", text)
    if not PHONE_RE.fullmatch(number):
        issues.append(
            Issue("value", "a phone number is 9-15 digits, optionally after +", [f"{where}.value"])
        )
        return None, None
    return "phone", number
