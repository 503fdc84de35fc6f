"""Slot (*termin*) <-> central model.

Checked here (fhir.resources checks structure only):
- ``Slot.status`` in the R4 set (free | busy | busy-unavailable | busy-tentative
  | entered-in-error);
- ``Slot.serviceType``: one scope (directly or via the cell-specialty map);
  required, so every slot counts for its scope in the reports (R-SCHED-2);
- ``Slot.appointmentType``: the slot category from
  ``http://cer-gateway.org/fhir/CodeSystem/slot-category``; required where the
  scope data say so (``slot_category_required``: cardiology, R-SCHED-3),
  optional for the other scopes. When absent the
  category is ``None``: no default is assumed, because a wrong guess would
  open a control slot to patients (R-PAT-6) or hide a first-time one.
  Codings of other systems in ``appointmentType`` (e.g. HL7 v2-0276) are ignored;
- ``Slot.schedule``: ``Schedule/<id>``;
- ``Slot.start`` / ``Slot.end``: offsets present, ``start < end``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.errors import FhirError, Issue
from gateway.model import CentralSlot
from gateway.timeutil import to_store
from mappings import codes
from mappings.references import (
    fhir_instant,
    read_identifiers,
    read_instant,
    read_reference,
    write_identifiers,
)

STATUSES = ("free", "busy", "busy-unavailable", "busy-tentative", "entered-in-error")


def to_central(res: dict[str, Any]) -> CentralSlot:
    """FHIR Slot -> central; raises ``FhirError(422)`` listing every issue found."""
    return CentralSlot(**_read(res))


def central_dict(res: dict[str, Any]) -> dict[str, Any]:
    """``to_central(res).model_dump()`` without the model, the same dict for every input.

    ``_read`` has checked and converted every field already; ``CentralSlot`` would
    give back the very values it was given when they are of the plain types it
    declares: the text and the ``None`` s checked here (the ids, instants and
    ``overbooked`` are so by construction). Anything else (e.g. a ``str``
    subclass, or a ``comment`` that is not text) takes the model's way, which
    converts or refuses it as it always did. A Bundle's Slots are some 500 of
    these: the model's validation and dump were a sixth of the Bundle's mapping.
    """
    fields = _read(res)
    plain = (
        type(fields["scope"]) is str
        and type(fields["status"]) is str
        and (fields["category"] is None or type(fields["category"]) is str)
        and (fields["comment"] is None or type(fields["comment"]) is str)
    )
    for ident in fields["identifiers"] if plain else ():
        system, value = ident["system"], ident["value"]
        if (system is not None and type(system) is not str) or type(value) is not str:
            plain = False  # value is never None: read_identifiers keeps only those with one
            break
    if plain:
        return fields
    result: dict[str, Any] = CentralSlot(**fields).model_dump()
    return result


def _read(res: dict[str, Any]) -> dict[str, Any]:
    """The checked fields of ``CentralSlot``, in its order; ``FhirError(422)`` with every issue."""
    issues: list[Issue] = []

    status = res.get("status")
    if status is None:
        issues.append(Issue("required", "status is required", ["Slot.status"]))
    elif status not in STATUSES:
        issues.append(
            Issue("code-invalid", f"status must be one of {', '.join(STATUSES)}", ["Slot.status"])
        )

    schedule = res.get("schedule")
    schedule_id = None
    if schedule is None:
        issues.append(Issue("required", "schedule (Schedule/<id>) is required", ["Slot.schedule"]))
    else:
        schedule_id = read_reference(schedule, "Schedule", "Slot.schedule", issues)

    scope = read_slot_scope(res.get("serviceType") or [], issues)

    category, _ = codes.read_code(
        res.get("appointmentType"),
        codes.SLOT_CATEGORY_SYSTEM,
        codes.slot_category_table(),
        "Slot.appointmentType",
        issues,
        "slot category",
    )
    if (
        category is None
        and scope is not None
        and codes.scope_table()[scope].slot_category_required
        and not _has_issue_at(issues, "Slot.appointmentType")
    ):
        issues.append(
            Issue(
                "required",
                f"a {scope} slot needs its category in appointmentType "
                f"({codes.SLOT_CATEGORY_SYSTEM}: {', '.join(codes.slot_categories())}; R-SCHED-3)",
                ["Slot.appointmentType"],
            )
        )

    start = _required_instant(res, "start", issues)
    end = _required_instant(res, "end", issues)
    if start is not None and end is not None and not start < end:
        issues.append(Issue("invariant", "the slot must end after it starts", ["Slot.end"]))

    overbooked = res.get("overbooked", False)
    if not isinstance(overbooked, bool):
        issues.append(Issue("value", "overbooked must be true or false", ["Slot.overbooked"]))

    if (
        issues
        or schedule_id is None
        or scope is None
        or start is None
        or end is None
        or status is None
    ):
        raise FhirError(422, issues)
    return {
        "schedule_id": schedule_id,
        "scope": scope,
        "category": category,
        "start": to_store(start),
        "end": to_store(end),
        "status": status,
        "overbooked": overbooked,
        "comment": res.get("comment"),
        "identifiers": read_identifiers(res),
    }


def to_fhir(rid: str, central: CentralSlot) -> dict[str, Any]:
    """Central -> FHIR Slot (the shape we generate when no vendor original exists)."""
    out: dict[str, Any] = {"resourceType": "Slot", "id": rid}
    if central.identifiers:
        out["identifier"] = write_identifiers(central.identifiers)
    out["serviceType"] = [{"coding": [codes.coding(codes.SCOPE_SYSTEM, central.scope)]}]
    if central.category:
        out["appointmentType"] = {
            "coding": [codes.coding(codes.SLOT_CATEGORY_SYSTEM, central.category)]
        }
    out["schedule"] = {"reference": f"Schedule/{central.schedule_id}"}
    out["status"] = central.status
    out["start"] = fhir_instant(central.start)
    out["end"] = fhir_instant(central.end)
    if central.overbooked:
        out["overbooked"] = True
    if central.comment:
        out["comment"] = central.comment
    return out


def read_slot_scope(service_types: list[Any], issues: list[Issue]) -> str | None:
    """The one scope of a slot from its ``serviceType`` list."""
    if not service_types:
        issues.append(
            Issue(
                "required",
                f"a slot names its scope in serviceType ({codes.SCOPE_SYSTEM}, or a cell "
                f"specialty {codes.CELL_SPECIALTY_SYSTEM})",
                ["Slot.serviceType"],
            )
        )
        return None
    if type(service_types) is not list:
        where = ["Slot.serviceType"]
        issues.append(Issue("structure", "serviceType must be a list of CodeableConcept", where))
        return None
    if len(service_types) == 1:
        plain = codes.plain_scope(service_types[0])
        if plain is not None:
            return plain
    found: list[str] = []
    for i, cc in enumerate(service_types):
        scope = codes.read_scope(cc, f"Slot.serviceType[{i}]", issues)
        if scope is not None and scope not in found:
            found.append(scope)
    if len(found) > 1:
        issues.append(
            Issue(
                "value",
                f"a slot belongs to one scope; serviceType names {', '.join(found)}",
                ["Slot.serviceType"],
            )
        )
        return None
    return found[0] if found else None


def _required_instant(res: dict[str, Any], name: str, issues: list[Issue]) -> datetime | None:
    path = f"Slot.{name}"
    if res.get(name) is None:
        issues.append(Issue("required", f"{name} is required", [path]))
        return None
    return read_instant(res[name], path, issues)


def _has_issue_at(issues: list[Issue], prefix: str) -> bool:
    return any(e.startswith(prefix) for i in issues for e in i.expression)
