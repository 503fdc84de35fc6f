"""Location (the facility, *placówka*) <-> central model.

The central model keeps what the booking rules need: name, status and the
address parts that feed the patient's location criteria (R-CRIT-1).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import FhirError, Issue
from gateway.model import CentralLocation

STATUSES = ("active", "suspended", "inactive")


def to_central(res: dict[str, Any]) -> CentralLocation:
    """FHIR Location -> central; code bindings checked here (fhir.resources does not)."""
    issues: list[Issue] = []
    status = res.get("status", "active")
    if status not in STATUSES:
        issues.append(
            Issue(
                "code-invalid", f"status must be one of {', '.join(STATUSES)}", ["Location.status"]
            )
        )
    addr = res.get("address") or {}
    postal = addr.get("postalCode")
    if postal is not None and not _postal_ok(postal):
        issues.append(
            Issue("value", "postalCode must look like 00-000", ["Location.address.postalCode"])
        )
    if issues:
        raise FhirError(422, issues)
    return CentralLocation(
        name=res.get("name"),
        status=status,
        postal_code=postal,
        city=addr.get("city"),
        lines=list(addr.get("line") or []),
        identifiers=[
            {"system": i.get("system"), "value": i.get("value")}
            for i in res.get("identifier") or []
            if i.get("value")
        ],
    )


def to_fhir(rid: str, loc: CentralLocation) -> dict[str, Any]:
    """Central -> FHIR Location (the shape we generate when no vendor original exists)."""
    out: dict[str, Any] = {"resourceType": "Location", "id": rid, "status": loc.status}
    if loc.name:
        out["name"] = loc.name
    if loc.identifiers:
        out["identifier"] = [dict(i) for i in loc.identifiers]
    addr: dict[str, Any] = {}
    if loc.lines:
        addr["line"] = list(loc.lines)
    if loc.city:
        addr["city"] = loc.city
    if loc.postal_code:
        addr["postalCode"] = loc.postal_code
    if addr:
        out["address"] = addr
    return out


def _postal_ok(value: str) -> bool:
    return len(value) == 6 and value[2] == "-" and (value[:2] + value[3:]).isdigit()
