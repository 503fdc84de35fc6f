"""The embedded SIMP (``Eligibility`` port): screening eligibility from the history in the store.

Decides as SIMP does for the day of the exam (R-PAT-3, R-PAT-4) with the pure
rule ``gateway.patients.screening_verdict``, over the patient's history in the
``screenings`` collection:

- exams done: ``{pesel, scope, date, hpv, status: "done"}`` (the sandbox sets
  them with ``POST /sandbox/screenings``);
- the exam booked now, one per patient and programme: ``_id``
  ``booked|<pesel>|<scope>`` with ``appointment_id`` and ``date``. The ``_id``
  is the guard: two bookings racing for one patient get one winner.

Insurance (eWUŚ) is taken as confirmed: the sandbox has no uninsured patients.
A real SIMP adapter implements the same three calls over its web service.
"""

from __future__ import annotations

from datetime import date

from gateway import constants as c
from gateway.patients import ScreeningExam, screening_verdict
from gateway.ports import DuplicateKey, EligibilityVerdict, Store
from mappings import codes

BOOKED = "booked"
DONE = "done"


def booked_key(pesel: str, scope: str) -> str:
    return f"booked|{pesel}|{scope}"


class StoreEligibility:
    """SIMP's answers from the screening history kept in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def history(self, pesel: str, scope: str) -> list[ScreeningExam]:
        docs = await self.store.find(c.SCREENINGS, {"pesel": pesel, "scope": scope})
        return [
            ScreeningExam(
                date.fromisoformat(d["date"]),
                hpv=bool(d.get("hpv")),
                booked_as=d.get("appointment_id") if d.get("status") == BOOKED else None,
            )
            for d in docs
        ]

    async def check(
        self, pesel: str, scope: str, exam_day: date, *, replacing: str | None = None
    ) -> EligibilityVerdict:
        info = codes.scopes().get(scope)
        if info is None or info.screening is None:
            return EligibilityVerdict(True)
        history = await self.history(pesel, scope)
        return screening_verdict(info.screening, pesel, exam_day, history, replacing=replacing)

    async def booked(
        self,
        pesel: str,
        scope: str,
        exam_day: date,
        appointment_id: str,
        *,
        replacing: str | None = None,
    ) -> bool:
        key = booked_key(pesel, scope)
        fields = {
            "pesel": pesel,
            "scope": scope,
            "date": exam_day.isoformat(),
            "status": BOOKED,
            "appointment_id": appointment_id,
        }
        holders = [appointment_id] + ([replacing] if replacing else [])
        moved = await self.store.update_one(
            c.SCREENINGS,
            {"_id": key, "appointment_id": {"$in": holders}},
            {"$set": fields},
        )
        if moved is not None:
            return True
        try:
            await self.store.insert(c.SCREENINGS, {"_id": key, **fields})
            return True
        except DuplicateKey:
            pass
        existing = await self.store.get(c.SCREENINGS, key)
        if existing is None:
            return False  # cancelled meanwhile: the caller may try again
        info = codes.scopes()[scope]
        past = ScreeningExam(
            date.fromisoformat(existing["date"]), booked_as=existing["appointment_id"]
        )
        if (
            info.screening is None
            or not screening_verdict(info.screening, pesel, exam_day, [past]).eligible
        ):
            return False
        # The booked exam is long past (the visit took place): keep it as done, take the guard.
        await self.store.update_one(
            c.SCREENINGS,
            {"_id": f"done|{existing['appointment_id']}"},
            {"$set": {"pesel": pesel, "scope": scope, "date": existing["date"], "status": DONE}},
            upsert=True,
        )
        taken = await self.store.update_one(
            c.SCREENINGS,
            {"_id": key, "appointment_id": existing["appointment_id"]},
            {"$set": fields},
        )
        return taken is not None

    async def cancelled(self, pesel: str, scope: str, appointment_id: str) -> None:
        await self.store.delete_one(
            c.SCREENINGS, {"_id": booked_key(pesel, scope), "appointment_id": appointment_id}
        )
