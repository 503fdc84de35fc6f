"""Schedule (*grafik*, *harmonogram*) <-> central model.

Checked here (fhir.resources checks structure only):
- ``Schedule.serviceType``: at least one, each carrying a known scope, directly
  (``http://cer-gateway.org/fhir/CodeSystem/scope``) or as a cell-specialty
  code mapped by ``mappings/data/cell-specialty-scope.json`` (R-SCOPE-1, R-SCOPE-2);
- ``Schedule.actor``: exactly one ``Location/<id>`` (the facility whose address
  feeds the location criteria, R-CRIT-1). Whether that Location exists in the
  tenant is the worker's check; other actors (e.g. a Practitioner) are kept;
- ``Schedule.planningHorizon``: offsets on date-times, end not before start.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import FhirError, Issue
from gateway.model import CentralSchedule
from mappings import codes
from mappings.references import (
    fhir_instant,
    is_placeholder,
    read_identifiers,
    read_period,
    read_reference,
    reference_type,
    store_or_none,
    write_identifiers,
)


def to_central(res: dict[str, Any]) -> CentralSchedule:
    """FHIR Schedule -> central; raises ``FhirError(422)`` listing every issue found."""
    issues: list[Issue] = []
    active = res.get("active", True)
    if not isinstance(active, bool):
        issues.append(Issue("value", "active must be true or false", ["Schedule.active"]))
        active = True

    scopes: list[str] = []
    service_types = res.get("serviceType") or []
    if not service_types:
        issues.append(
            Issue(
                "required",
                "a schedule names its scope(s) in serviceType "
                f"({codes.SCOPE_SYSTEM}, or a cell specialty {codes.CELL_SPECIALTY_SYSTEM})",
                ["Schedule.serviceType"],
            )
        )
    for i, cc in enumerate(service_types):
        scope = codes.read_scope(cc, f"Schedule.serviceType[{i}]", issues)
        if scope is not None and scope not in scopes:
            scopes.append(scope)

    location_id: str | None = None
    location_seen = False
    others: list[str] = []
    actors = list(res.get("actor") or [])
    refs = [a.get("reference") if isinstance(a, dict) else None for a in actors]
    typed = [
        (isinstance(ref, str) and reference_type(ref) == "Location")
        or (isinstance(a, dict) and a.get("type") == "Location")
        for a, ref in zip(actors, refs, strict=True)
    ]
    for i, actor in enumerate(actors):
        path = f"Schedule.actor[{i}]"
        ref = refs[i]
        is_location = typed[i] or (
            # An unresolved urn:uuid may be the Location: report it as a bad reference.
            isinstance(ref, str) and is_placeholder(ref) and not any(typed)
        )
        if is_location:
            if location_seen:
                issues.append(
                    Issue("value", "a schedule belongs to one Location; found another", [path])
                )
                continue
            location_seen = True
            location_id = read_reference(actor, "Location", path, issues)
        elif isinstance(ref, str):
            others.append(ref)
    if not location_seen:
        issues.append(
            Issue(
                "required",
                "Schedule.actor must include a reference to the facility's Location "
                "(Location/<id>)",
                ["Schedule.actor"],
            )
        )

    start, end = read_period(res.get("planningHorizon"), "Schedule.planningHorizon", issues)
    if issues or location_id is None:
        raise FhirError(422, issues)
    return CentralSchedule(
        active=active,
        scopes=scopes,
        location_id=location_id,
        comment=res.get("comment"),
        horizon_start=store_or_none(start),
        horizon_end=store_or_none(end),
        other_actors=others,
        identifiers=read_identifiers(res),
    )


def to_fhir(rid: str, central: CentralSchedule) -> dict[str, Any]:
    """Central -> FHIR Schedule (the shape we generate when no vendor original exists)."""
    out: dict[str, Any] = {"resourceType": "Schedule", "id": rid}
    if central.identifiers:
        out["identifier"] = write_identifiers(central.identifiers)
    out["active"] = central.active
    out["serviceType"] = [
        {"coding": [codes.coding(codes.SCOPE_SYSTEM, scope)]} for scope in central.scopes
    ]
    out["actor"] = [{"reference": f"Location/{central.location_id}"}] + [
        {"reference": ref} for ref in central.other_actors
    ]
    horizon: dict[str, str] = {}
    if central.horizon_start:
        horizon["start"] = fhir_instant(central.horizon_start)
    if central.horizon_end:
        horizon["end"] = fhir_instant(central.horizon_end)
    if horizon:
        out["planningHorizon"] = horizon
    if central.comment:
        out["comment"] = central.comment
    return out
