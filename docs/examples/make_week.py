"""Write ``transaction-week-cardiology.json``: one week of cardiology slots as a transaction.

A FHIR R4 ``transaction`` Bundle a provider system could send on joining
(R-SCHED-2: the schedule and all its slots): one Location, one cardiology
Schedule referencing it, and Mon-Fri 08:00-12:00 Europe/Warsaw in 20-minute
slots (week of Monday 2027-01-11) with a mix of slot categories (R-SCHED-3):
mostly first-stable, some first-urgent, a few control, two first-privileged.
New resources reference each other by ``urn:uuid`` fullUrls; every entry is a
conditional create (``ifNoneExist`` on the vendor's business identifier), so
sending the Bundle twice creates nothing twice.

Deterministic: the uuids are uuid5 of the business identifiers, so running it
again writes the same file.  Usage: ``python docs/examples/make_week.py [out]``.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

WARSAW = ZoneInfo("Europe/Warsaw")
MONDAY = date(2027, 1, 11)
DAYS = 5
FIRST, LAST = time(8, 0), time(12, 0)
MINUTES = 20

VENDOR = "http://example-vendor.pl/fhir/sid"
SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"
CELL_SPECIALTY = "urn:oid:2.16.840.1.113883.3.4424.11.2.4"
CATEGORY = "http://cer-gateway.org/fhir/CodeSystem/slot-category"
CATEGORY_DISPLAY = {
    "first-urgent": "Pierwszorazowa \u2013 przypadek pilny",
    "first-stable": "Pierwszorazowa \u2013 przypadek stabilny",
    "first-privileged": "Pierwszorazowa \u2013 pacjent uprzywilejowany (poza kolejnością)",
    "control": "Kontrolna / kolejna",
}
OUT = Path(__file__).with_name("transaction-week-cardiology.json")


def urn(system: str, value: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{system}|{value}"))


def category(day: int, index: int) -> str:
    """The category of the ``index``-th slot (0-11) of weekday ``day`` (0 = Monday)."""
    if index == 0 or (day == 2 and index == 6):
        return "first-urgent"
    if index == 11 or (index == 10 and day in (1, 3)):
        return "control"
    if index == 5 and day in (0, 3):
        return "first-privileged"
    return "first-stable"


def entry(full_url: str, resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={system}|{value}",
        },
    }


def build_bundle() -> dict[str, Any]:
    loc_system, loc_value = f"{VENDOR}/location", "LOC-001"
    sch_system, sch_value = f"{VENDOR}/schedule", "SCH-KARD-2027-W02"
    slot_system = f"{VENDOR}/slot"
    loc_url = urn(loc_system, loc_value)
    sch_url = urn(sch_system, sch_value)
    cardiology = {"system": SCOPE, "code": "cardiology", "display": "Kardiologia"}

    location = {
        "resourceType": "Location",
        "identifier": [{"system": loc_system, "value": loc_value}],
        "status": "active",
        "name": "Przychodnia Przykładowa \u2013 Poradnia Kardiologiczna",
        "address": {"line": ["ul. Przykładowa 1"], "city": "Kraków", "postalCode": "31-000"},
    }
    last_day = MONDAY + timedelta(days=DAYS - 1)
    schedule = {
        "resourceType": "Schedule",
        "identifier": [{"system": sch_system, "value": sch_value}],
        "active": True,
        "serviceType": [
            {
                "coding": [
                    cardiology,
                    {
                        "system": CELL_SPECIALTY,
                        "code": "1100",
                        "display": "Poradnia kardiologiczna",
                    },
                ]
            }
        ],
        "actor": [{"reference": loc_url}],
        "planningHorizon": {"start": MONDAY.isoformat(), "end": last_day.isoformat()},
        "comment": "Konsultacje kardiologiczne, tydzień od 2027-01-11",
    }
    entries = [
        entry(loc_url, location, loc_system, loc_value),
        entry(sch_url, schedule, sch_system, sch_value),
    ]
    for day in range(DAYS):
        d = MONDAY + timedelta(days=day)
        start = datetime.combine(d, FIRST, tzinfo=WARSAW)
        stop = datetime.combine(d, LAST, tzinfo=WARSAW)
        index = 0
        while start < stop:
            end = start + timedelta(minutes=MINUTES)
            value = f"SLOT-KARD-{start:%Y%m%d-%H%M}"
            cat = category(day, index)
            slot = {
                "resourceType": "Slot",
                "identifier": [{"system": slot_system, "value": value}],
                "serviceType": [{"coding": [cardiology]}],
                "appointmentType": {
                    "coding": [{"system": CATEGORY, "code": cat, "display": CATEGORY_DISPLAY[cat]}]
                },
                "schedule": {"reference": sch_url},
                "status": "free",
                "start": start.isoformat(),
                "end": end.isoformat(),
            }
            entries.append(entry(urn(slot_system, value), slot, slot_system, value))
            start, index = end, index + 1
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def render(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    out.write_text(render(build_bundle()), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
