"""Synthetic data for the initial import (R-SCHED-5): a provider's NDJSON export.

``write_dataset(directory, appointments=N, seed=S)`` writes what a provider's
practice system would export for the import, one resource per line:

- ``01-locations.ndjson``: the provider's facilities (cities and postal codes
  across Poland);
- ``02-schedules.ndjson``: one Schedule per specialist and scope at a facility
  (scopes weighted like the pilot: mostly cardiology, then mammography and
  cytology screening, some stage-2 scopes, R-SCOPE-2);
- ``03-slots-NNNN.ndjson``: the Slots of the next ``weeks`` working weeks,
  Monday to Friday in Polish time (DST included), 20-minute specialist visits,
  10-minute mammography and 15-minute cytology; cardiology slots in the
  categories of R-SCHED-3 (urgent, stable, privileged first-time visits and
  control visits), the other specialist scopes first-time and control;
- ``04-appointments-NNNN.ndjson``: the booked visits, as many as asked: the
  nearer the day the fuller (98 % of next week's slots, 75 % half a year
  out), each with its slot's start and end, a valid PESEL (screening: women of
  the programme's ages), an e-referral for first-time specialist visits
  (R-PAT-2), a phone number (R-PAT-7), the privileged mark on privileged slots
  (R-PAT-5). A booked visit's Slot is ``busy``.

Deterministic for a seed; written as it goes (constant memory); files of at
most ``per_file`` lines. The data are made up: no real person's PESEL is
meant (the numbers are valid checksums only).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import orjson

from gateway.pesel import generate as make_pesel

WARSAW = ZoneInfo("Europe/Warsaw")
VENDOR = "http://example-vendor.pl/fhir/sid"
SCOPE_SYSTEM = "http://cer-gateway.org/fhir/CodeSystem/scope"
CATEGORY_SYSTEM = "http://cer-gateway.org/fhir/CodeSystem/slot-category"
PESEL_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.1.1.616"
REFERRAL_SYSTEM = "http://cer-gateway.org/fhir/sid/e-referral"
EXT = "http://cer-gateway.org/fhir/StructureDefinition"
REFERRAL_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

# (scope, share of schedules, minutes per visit)
SCOPES = [
    ("cardiology", 0.50, 20),
    ("mammography", 0.20, 10),
    ("cytology", 0.18, 15),
    ("endocrinology", 0.04, 20),
    ("pulmonology", 0.03, 20),
    ("nephrology", 0.02, 20),
    ("vascular", 0.02, 20),
    ("hepatology", 0.01, 20),
]
SCREENING = {"mammography": (45, 74), "cytology": (25, 64)}
# Cardiology's slot categories (R-SCHED-3) and their shares; other specialist scopes
# have first-time and control visits.
CARDIOLOGY_CATEGORIES = [
    ("first-urgent", 0.15),
    ("first-stable", 0.45),
    ("first-privileged", 0.05),
    ("control", 0.35),
]
SPECIALIST_CATEGORIES = [("first-stable", 0.6), ("control", 0.4)]
CITIES = [
    ("Kraków", "31"),
    ("Warszawa", "00"),
    ("Łódź", "90"),
    ("Wrocław", "50"),
    ("Poznań", "60"),
    ("Gdańsk", "80"),
    ("Szczecin", "70"),
    ("Lublin", "20"),
    ("Katowice", "40"),
    ("Białystok", "15"),
    ("Rzeszów", "35"),
    ("Olsztyn", "10"),
]
FIRST_VISIT, LAST_VISIT = dtime(8, 0), dtime(16, 0)


@dataclass
class Counts:
    locations: int = 0
    schedules: int = 0
    slots: int = 0
    appointments: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def resources(self) -> int:
        return self.locations + self.schedules + self.slots + self.appointments


class Rotating:
    """NDJSON lines into ``<stem>-0001.ndjson``, ``-0002``, ... of at most ``per_file`` lines."""

    def __init__(self, directory: Path, stem: str, per_file: int, counts: Counts) -> None:
        self.directory, self.stem, self.per_file, self.counts = directory, stem, per_file, counts
        self.n = 0
        self.lines = 0
        self.out: IO[bytes] | None = None

    def write(self, resource: dict[str, Any]) -> None:
        if self.out is None or self.lines >= self.per_file:
            self.close()
            self.n += 1
            path = self.directory / f"{self.stem}-{self.n:04d}.ndjson"
            self.counts.files.append(path.name)
            self.out = path.open("wb")
            self.lines = 0
        self.out.write(orjson.dumps(resource) + b"\n")
        self.lines += 1

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def pick(rng: random.Random, weighted: list[tuple[str, float]]) -> str:
    x = rng.random()
    for value, share in weighted:
        x -= share
        if x < 0:
            return value
    return weighted[-1][0]


def working_days(first: date, weeks: int) -> Iterator[date]:
    monday = first - timedelta(days=first.weekday())
    for d in range(weeks * 7):
        day = monday + timedelta(days=d)
        if day.weekday() < 5 and day >= first:
            yield day


def booked_share(week: int, weeks: int) -> float:
    """The nearer the fuller: 98 % next week, 75 % at the end of the horizon."""
    return 0.98 - 0.23 * week / max(weeks - 1, 1)


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def location(n: int, rng: random.Random) -> dict[str, Any]:
    city, prefix = CITIES[n % len(CITIES)]
    return {
        "resourceType": "Location",
        "id": f"loc-{n:03d}",
        "identifier": [{"system": f"{VENDOR}/location", "value": f"LOC-{n:03d}"}],
        "status": "active",
        "name": f"Przychodnia Specjalistyczna nr {n + 1} \u2013 {city}",
        "address": {
            "line": [f"ul. Zdrowa {rng.randint(1, 120)}"],
            "city": city,
            "postalCode": f"{prefix}-{rng.randint(0, 999):03d}",
        },
    }


def schedule(n: int, loc: str, scope: str, first: date, last: date) -> dict[str, Any]:
    return {
        "resourceType": "Schedule",
        "id": f"sch-{n:05d}",
        "identifier": [{"system": f"{VENDOR}/schedule", "value": f"SCH-{n:05d}"}],
        "active": True,
        "serviceType": [{"coding": [coding(SCOPE_SYSTEM, scope)]}],
        "actor": [{"reference": f"Location/{loc}"}],
        "planningHorizon": {"start": first.isoformat(), "end": last.isoformat()},
        "comment": f"Specjalista {n}: {scope}",
    }


def pesel_for(rng: random.Random, scope: str, day: date) -> str:
    ages = SCREENING.get(scope)
    if ages is not None:
        age, sex = rng.randint(*ages), "female"
    else:
        age, sex = rng.randint(18, 90), rng.choice(("female", "male"))
    born = date(day.year - age, 1, 1) + timedelta(days=rng.randrange(365))
    return make_pesel(born, sex, serial=rng.randrange(5000))


def referral(rng: random.Random) -> str:
    key = "".join(rng.choice(REFERRAL_ALPHABET) for _ in range(16))
    return f"{key}:{rng.randint(0, 9999):04d}"


def write_dataset(
    directory: Path,
    *,
    appointments: int,
    seed: int = 2026,
    first_day: date = date(2027, 1, 4),
    weeks: int = 26,
    per_file: int = 250_000,
) -> Counts:
    """Write the data set into ``directory`` (created); returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = Counts()
    days = list(working_days(first_day, weeks))
    mean_booked = sum(booked_share(w, weeks) for w in range(weeks)) / weeks
    # Enough schedules for the appointments asked (average visits a day over the scopes).
    per_day = sum(share * (8 * 60 // minutes) for _, share, minutes in SCOPES)
    n_schedules = max(1, round(appointments / (len(days) * per_day * mean_booked) + 0.5))
    n_locations = max(1, min(60, n_schedules // 12 + 1))
    with (directory / "01-locations.ndjson").open("wb") as out:
        for n in range(n_locations):
            out.write(orjson.dumps(location(n, rng)) + b"\n")
            counts.locations += 1
    counts.files.append("01-locations.ndjson")
    plans: list[tuple[str, str, int]] = []  # (schedule id, scope, minutes)
    with (directory / "02-schedules.ndjson").open("wb") as out:
        for n in range(n_schedules):
            scope = pick(rng, [(s, share) for s, share, _ in SCOPES])
            minutes = next(m for s, _, m in SCOPES if s == scope)
            loc = f"loc-{rng.randrange(n_locations):03d}"
            sch = schedule(n, loc, scope, days[0], days[-1])
            out.write(orjson.dumps(sch) + b"\n")
            plans.append((sch["id"], scope, minutes))
            counts.schedules += 1
    counts.files.append("02-schedules.ndjson")
    slots_out = Rotating(directory, "03-slots", per_file, counts)
    appts_out = Rotating(directory, "04-appointments", per_file, counts)
    try:
        for sch_id, scope, minutes in plans:
            for day in days:
                week = (day - days[0]).days // 7
                share = booked_share(week, weeks)
                start = datetime.combine(day, FIRST_VISIT, tzinfo=WARSAW)
                close = datetime.combine(day, LAST_VISIT, tzinfo=WARSAW)
                while start < close:
                    end = start + timedelta(minutes=minutes)
                    book = counts.appointments < appointments and rng.random() < share
                    write_slot(slots_out, appts_out, rng, sch_id, scope, start, end, book)
                    counts.slots += 1
                    if book:
                        counts.appointments += 1
                    start = end
            if counts.appointments >= appointments:
                break
    finally:
        slots_out.close()
        appts_out.close()
    return counts


def write_slot(
    slots_out: Rotating,
    appts_out: Rotating,
    rng: random.Random,
    sch_id: str,
    scope: str,
    start: datetime,
    end: datetime,
    book: bool,
) -> None:
    stamp = f"{start:%Y%m%d%H%M}"
    slot_id = f"{sch_id}-{stamp}"
    category = None
    if scope == "cardiology":
        category = pick(rng, CARDIOLOGY_CATEGORIES)
    elif scope not in SCREENING:
        category = pick(rng, SPECIALIST_CATEGORIES)
    slot: dict[str, Any] = {
        "resourceType": "Slot",
        "id": slot_id,
        "identifier": [{"system": f"{VENDOR}/slot", "value": f"SLOT-{slot_id}"}],
        "serviceType": [{"coding": [coding(SCOPE_SYSTEM, scope)]}],
        "schedule": {"reference": f"Schedule/{sch_id}"},
        "status": "busy" if book else "free",
        "start": start.isoformat(),
        "end": end.isoformat(),
    }
    if category:
        slot["appointmentType"] = {"coding": [coding(CATEGORY_SYSTEM, category)]}
    slots_out.write(slot)
    if not book:
        return
    day = start.date()
    extensions: list[dict[str, Any]] = [
        {
            "url": f"{EXT}/patient-contact",
            "valueContactPoint": {"system": "phone", "value": f"+4860{rng.randrange(10**7):07d}"},
        }
    ]
    if category == "first-privileged":
        extensions.append({"url": f"{EXT}/privileged", "valueBoolean": True})
    booked_at = start - timedelta(days=rng.randint(1, 120), minutes=rng.randrange(600))
    appt: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": f"app-{slot_id}",
        "extension": extensions,
        "identifier": [{"system": f"{VENDOR}/appointment", "value": f"APP-{slot_id}"}],
        "status": "booked",
        "serviceType": [{"coding": [coding(SCOPE_SYSTEM, scope)]}],
        "start": start.isoformat(),
        "end": end.isoformat(),
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "created": booked_at.isoformat(),
        "participant": [
            {
                "actor": {
                    "type": "Patient",
                    "identifier": {"system": PESEL_SYSTEM, "value": pesel_for(rng, scope, day)},
                },
                "required": "required",
                "status": "accepted",
            }
        ],
    }
    if category:
        appt["appointmentType"] = {"coding": [coding(CATEGORY_SYSTEM, category)]}
    if category and category.startswith("first") and scope not in SCREENING:
        appt["basedOn"] = [{"identifier": {"system": REFERRAL_SYSTEM, "value": referral(rng)}}]
    appts_out.write(appt)
