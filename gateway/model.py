"""The central model (pydantic): what the booking rules work on.

FHIR is the wire format at the edges (``mappings/``); inside, handlers pass
these models or their plain-dict dumps.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field


class CentralLocation(BaseModel):
    """A facility (*placówka*) and the address parts used by location criteria."""

    name: str | None = None
    status: str = "active"
    postal_code: str | None = None
    city: str | None = None
    lines: list[str] = Field(default_factory=list)
    identifiers: list[dict[str, str | None]] = Field(default_factory=list)


# Instants in the central model are fixed-width UTC text (``gateway.timeutil.to_store``),
# e.g. ``2027-01-11T07:00:00.000Z``: they sort lexicographically in every store.
StoreInstant = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")]

SlotStatus = Literal["free", "busy", "busy-unavailable", "busy-tentative", "entered-in-error"]
AppointmentStatus = Literal[
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
]
Identifiers = list[dict[str, str | None]]


class CentralPeriod(BaseModel):
    """A time window (either end may be open), e.g. a waiting patient's acceptable dates."""

    start: StoreInstant | None = None
    end: StoreInstant | None = None


class CentralSchedule(BaseModel):
    """A schedule (*grafik*, *harmonogram*) of one facility for one or more scopes.

    The facility keeps managing its own schedule (R-SCHED-1); the central copy
    says which scopes (*zakresy*) it serves and where (the ``Location`` id,
    resolved within the tenant by the worker). ``horizon_*`` is the planning
    horizon the provider declares. R4 ``Schedule`` has no name (R5 has), so
    the free text is ``comment``.
    """

    active: bool = True
    scopes: list[str]
    location_id: str
    comment: str | None = None
    horizon_start: StoreInstant | None = None
    horizon_end: StoreInstant | None = None
    other_actors: list[str] = Field(default_factory=list)  # e.g. Practitioner/…, as sent
    identifiers: Identifiers = Field(default_factory=list)


class CentralSlot(BaseModel):
    """An appointment slot (*termin*) in a schedule: booked or free, first-time or control.

    ``category`` is the slot category (R-SCHED-3): ``first-urgent``,
    ``first-stable``, ``first-privileged`` or ``control``; required for
    cardiology, ``None`` where the provider sent none (no default is assumed).
    """

    schedule_id: str
    scope: str
    category: str | None = None
    start: StoreInstant
    end: StoreInstant
    status: SlotStatus = "free"
    overbooked: bool = False
    comment: str | None = None
    identifiers: Identifiers = Field(default_factory=list)


class CentralReferral(BaseModel):
    """An e-referral (*e-skierowanie*): its key (*klucz*) and 4-digit code (*kod*)."""

    key: str
    code: str


class CentralContact(BaseModel):
    """The patient's contact data for this visit (R-PAT-7; channels follow it, R-NOT-4)."""

    phone: str | None = Field(default=None, repr=False)
    email: str | None = Field(default=None, repr=False)


class CentralAppointment(BaseModel):
    """A visit (*wizyta*): a booking of a slot, or a waiting-room entry (*Poczekalnia*).

    ``start`` / ``end`` may be empty when the provider sent only the slot: the
    worker copies them from the slot. ``scope`` and ``category`` likewise.
    ``privileged`` records the out-of-turn entitlement verified by the
    facility (R-PAT-5). ``cancel_reason`` is a code of the fixed list (R-CAN-1),
    ``cancel_note`` its free text. ``channel`` says where it was booked
    (``provider``, ``portal``, ``sms``, ``waiting-room``, ``manual``, ``import``), set
    by the gateway when the visit is booked and kept after (``operations.record_booking``);
    ``booked_at`` and ``cancel_channel`` likewise, for the reports and the payer.
    ``requested_period`` is the waiting patient's acceptable windows
    (``Appointment.requestedPeriod``, 0..* in FHIR). The PESEL and contact data
    are personal data: never log them (they are left out of ``repr``).
    """

    status: AppointmentStatus
    slot_ids: list[str] = Field(default_factory=list)
    start: StoreInstant | None = None
    end: StoreInstant | None = None
    scope: str | None = None
    category: str | None = None
    patient_pesel: str = Field(repr=False)
    referral: CentralReferral | None = Field(default=None, repr=False)
    cancel_reason: str | None = None
    cancel_note: str | None = None
    cancelled_at: StoreInstant | None = None
    channel: str = "provider"
    booked_at: StoreInstant | None = None  # when the visit was first booked (reports)
    cancel_channel: str | None = None  # where the cancellation came from (R-CAN-4)
    contact: CentralContact | None = Field(default=None, repr=False)
    privileged: bool = False
    requested_period: list[CentralPeriod] = Field(default_factory=list)
    comment: str | None = None
    identifiers: Identifiers = Field(default_factory=list)
