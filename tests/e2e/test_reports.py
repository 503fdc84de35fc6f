"""The activity and compliance reports over HTTP, and who may read them (issue 9).

On the embedded default and on RabbitMQ. Bookings are counted by the channel
recorded when they were made (provider system, IKP), cancellations by reason
and by the channel they came through (SMS vs portal, R-CAN-4); compliance is
judged against the scope calendar on the sandbox clock (R-SCOPE-3).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from tests.e2e.conftest import new_provider
from tests.e2e.fhir_support import a_pesel
from tests.e2e.notify_support import Clinic, set_clock, wait_outbox, warsaw
from tests.e2e.patient_support import book, cancel, patient, referral

NOW = warsaw(2027, 1, 4, 9)
DAY = "2027-01-04"
VISIT_DAY = "2027-01-13"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(client: Any, path: str, token: str | None, **query: str) -> tuple[int, Any, str]:
    resp = await client.get(path, params=query, headers=bearer(token) if token else {})
    text = await resp.text()
    return resp.status, resp, text


async def payer(client: Any) -> dict[str, Any]:
    resp = await client.post("/sandbox/payers", json={})
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def sms_cancel(client: Any, pesel: str) -> None:
    """The patient answers the booking SMS with its reference (R-NOT-2): cancelled by SMS."""
    msgs = await wait_outbox(client, 1, pesel=pesel, channel="sms")
    ref = msgs[0]["ref"]
    resp = await client.post(
        "/channels/sms/inbound", json={"from": "+48 600 100 200", "text": f"ANULUJ {ref}"}
    )
    body = await resp.json()
    assert resp.status == 200 and body["result"] == "cancelled", body


async def test_activity_counts_bookings_and_cancellations_by_channel(client: Any) -> None:
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    for i in range(1, 6):
        await clinic.slot(f"s{i}", warsaw(2027, 1, 13, 8 + i))
    await clinic.slot("c1", warsaw(2027, 1, 13, 15), category="control")
    pesels = [a_pesel() for _ in range(3)]
    # the facility books three (channel provider); one is cancelled by the patient's SMS
    # reply, one by the facility
    await clinic.book("a1", "s1", pesels[0], email=None)
    await clinic.book("a2", "s2", pesels[1], email=None)
    await clinic.book("a3", "s3", pesels[2], email=None)
    await sms_cancel(client, pesels[1])
    await clinic.cancel("a3", "s3", pesels[2], email=None)
    # two patients book in IKP; one cancels there
    p1, p2 = await patient(client), await patient(client)
    st, b1 = await book(client, p1, f"{clinic.id}~s4", await referral(client, p1))
    assert st == 201, b1
    st, b2 = await book(client, p2, f"{clinic.id}~s5", await referral(client, p2))
    assert st == 201, b2
    st, body = await cancel(client, p2, b2["id"])
    assert st == 200, body

    status, _resp, text = await get(
        client, "/reports/activity", clinic.provider["token"], **{"from": DAY, "to": VISIT_DAY}
    )
    assert status == 200, text
    for p in [*pesels, p1.pesel, p2.pesel, "600100200"]:
        assert p not in text
    report = await _resp.json()
    rows = {(r["scope"], r["day"]): r for r in report["rows"]}
    assert set(rows) == {("cardiology", DAY), ("cardiology", VISIT_DAY)}
    today = rows[("cardiology", DAY)]
    assert today["provider"] == clinic.id
    assert today["bookings"]["by_channel"] == {"portal": 2, "provider": 3}
    assert today["bookings"]["by_group"] == {"central": 2, "facility": 3, "import": 0}
    assert today["cancellations"]["by_reason"] == {
        "patient-request": {"portal": 1},
        "patient-sms": {"sms": 1},
        "provider-unavailable": {"provider": 1},
    }
    assert today["cancellations"]["by_channel"] == {"portal": 1, "provider": 1, "sms": 1}
    visits = rows[("cardiology", VISIT_DAY)]
    first = visits["slots"]["first-stable"]
    # a1 and p1's visit hold their slots; the three cancelled ones are free again (or,
    # for a moment, held for the waiting room, R-CAN-2)
    assert first.get("booked") == 2
    assert first.get("free", 0) + first.get("held", 0) == 3
    assert visits["slots"]["control"] == {"free": 1}
    assert visits["bookings"]["total"] == 0  # bookings count on the day they were made

    # CSV: one measure per line
    status, resp, text = await get(
        client,
        "/reports/activity",
        clinic.provider["token"],
        **{"from": DAY, "to": DAY, "format": "csv", "sep": "semicolon"},
    )
    assert status == 200 and resp.content_type == "text/csv", text
    lines = list(csv.DictReader(io.StringIO(text), delimiter=";"))
    sms = [r for r in lines if r["measure"] == "cancellations" and r["channel"] == "sms"]
    assert [(r["reason"], r["value"]) for r in sms] == [("patient-sms", "1")]
    booked = {r["channel"]: r["value"] for r in lines if r["measure"] == "bookings"}
    assert booked == {"portal": "2", "provider": "3"}


async def test_a_provider_reads_only_its_own_reports_and_the_payer_reads_all(
    client: Any,
) -> None:
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", warsaw(2027, 1, 13, 8))
    other = await new_provider(client)
    nfz = await payer(client)
    mine = clinic.provider["token"]

    # another provider's report is as unknown as another provider's resource
    for path in ("/reports/activity", "/reports/compliance"):
        status, _r, text = await get(client, path, other["token"], provider=clinic.id)
        assert status == 404, text
        status, _r, text = await get(client, path, other["token"])
        assert status == 200 and clinic.id not in text, text
        status, _r, text = await get(client, path, None)
        assert status == 401, text
    p = await patient(client)
    status, _r, _t = await get(client, "/reports/compliance", p.token)
    assert status == 403

    status, _r, text = await get(
        client, "/reports/activity", mine, **{"from": VISIT_DAY, "to": VISIT_DAY}
    )
    assert status == 200 and clinic.id in text
    # the payer: every provider, or the ones it names
    status, r, text = await get(
        client, "/reports/activity", nfz["token"], **{"from": VISIT_DAY, "to": VISIT_DAY}
    )
    assert status == 200, text
    assert clinic.id in {row["provider"] for row in (await r.json())["rows"]}
    status, r, text = await get(client, "/reports/compliance", nfz["token"], provider=clinic.id)
    assert status == 200, text
    assert {row["provider"] for row in (await r.json())["rows"]} == {clinic.id}
    # a payer token writes nothing
    resp = await client.get("/fhir/Slot", headers=bearer(nfz["token"]))
    assert resp.status == 403
    # bad parameters are named
    status, _r, text = await get(client, "/reports/activity", mine, **{"from": "13.01.2027"})
    assert status == 400 and "from" in text
    status, _r, text = await get(
        client, "/reports/activity", mine, **{"from": "2027-01-10", "to": "2027-01-01"}
    )
    assert status == 400


async def test_compliance_against_the_scope_calendar(client: Any) -> None:
    """R-SCOPE-3: stage 1 schedules due 2026-06-01; from 2026-07-01 NFZ pays only for
    visits booked centrally. One provider transmits on time, one late, one never."""
    await set_clock(client, warsaw(2026, 5, 20, 9))
    on_time = await Clinic.open(client)
    await on_time.slot("s1", warsaw(2026, 7, 6, 8))
    await on_time.slot("s2", warsaw(2026, 7, 6, 8, 20), category="control")
    await on_time.slot("s3", warsaw(2026, 6, 29, 8), category="control")
    # a provider that transmitted on time and has since withdrawn its only slot
    withdrew = await Clinic.open(client)
    await withdrew.slot("s1", warsaw(2026, 7, 8, 8))
    await set_clock(client, warsaw(2026, 6, 10, 9))
    resp = await client.delete("/fhir/Slot/s1", headers=withdrew.h)
    assert resp.status in (200, 204), await resp.text()
    late = await Clinic.open(client)
    await late.slot("s1", warsaw(2026, 7, 7, 8))
    silent = await new_provider(client)
    # after the due date: one visit booked through the gateway, one moved over by the
    # initial import (booked outside central e-registration), one before the payment date
    await on_time.book("a1", "s1", a_pesel(), email=None)
    imported = on_time.appointment("s2", a_pesel(), email=None)
    imported["extension"].append(
        {
            "url": "http://cer-gateway.org/fhir/StructureDefinition/booking-channel",
            "valueCoding": {
                "system": "http://cer-gateway.org/fhir/CodeSystem/appointment-channel",
                "code": "import",
            },
        }
    )
    imported.pop("basedOn")
    await on_time.put("Appointment", "a2", imported)
    before = on_time.appointment("s3", a_pesel(), email=None)
    before.pop("basedOn")
    await on_time.put("Appointment", "a3", before)

    nfz = await payer(client)
    status, r, text = await get(client, "/reports/compliance", nfz["token"])
    assert status == 200, text
    report = await r.json()
    rows = {(row["provider"], row["scope"]): row for row in report["rows"]}
    a = rows[(on_time.id, "cardiology")]
    assert a["schedules_status"] == "on-time"
    assert a["first_slots_transmitted"].startswith("2026-05-20")
    assert a["schedules_due"] == "2026-06-01" and a["payment_withheld_risk"] is False
    assert a["visits_after_payment_date"] == 2
    assert a["booked_in_cer"] == 1 and a["share_booked_in_cer"] == 0.5
    assert a["by_channel"] == {"import": 1, "provider": 1}
    b = rows[(late.id, "cardiology")]
    assert b["schedules_status"] == "late" and b["payment_withheld_risk"] is True
    assert b["visits_after_payment_date"] == 0 and b["share_booked_in_cer"] is None
    w = rows[(withdrew.id, "cardiology")]
    assert (w["schedules_status"], w["slots"], w["schedules"]) == ("on-time", 0, 1)
    c = rows[(silent["provider_id"], None)]
    assert c["schedules_status"] == "no-schedules"

    # the provider reads its own line; CSV for the payer's spreadsheet
    status, r, text = await get(client, "/reports/compliance", on_time.provider["token"])
    assert {row["provider"] for row in (await r.json())["rows"]} == {on_time.id}
    status, r, text = await get(client, "/reports/compliance", nfz["token"], format="csv")
    assert status == 200 and r.content_type == "text/csv"
    lines = {row["provider"]: row for row in csv.DictReader(io.StringIO(text))}
    assert lines[late.id]["schedules_status"] == "late"
    assert lines[on_time.id]["share_booked_in_cer"] == "0.5"


async def test_the_booking_channel_is_recorded_by_the_gateway_and_kept(client: Any) -> None:
    """The payer counts patient-channel bookings (R-SCOPE-3): a provider's system cannot
    declare one, and its later update of a visit booked in IKP keeps the channel."""
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", warsaw(2027, 1, 13, 8))
    await clinic.slot("s2", warsaw(2027, 1, 13, 9))
    claimed = clinic.appointment("s1", a_pesel())
    claimed["extension"].append(
        {
            "url": "http://cer-gateway.org/fhir/StructureDefinition/booking-channel",
            "valueCoding": {
                "system": "http://cer-gateway.org/fhir/CodeSystem/appointment-channel",
                "code": "portal",
            },
        }
    )
    resp = await client.put("/fhir/Appointment/a1", json=claimed, headers=clinic.h)
    outcome = await resp.json()
    assert resp.status == 422, outcome
    assert outcome["issue"][0]["expression"] == ["Appointment.extension"]

    p = await patient(client)
    st, booked = await book(client, p, f"{clinic.id}~s2", await referral(client, p))
    assert st == 201, booked
    rid = booked["id"].split("~", 1)[1]
    # the next day the facility marks the patient arrived, sending its own representation
    await set_clock(client, warsaw(2027, 1, 5, 9))
    res = await clinic.get("Appointment", rid)
    res.pop("meta")
    res["extension"] = [e for e in res["extension"] if not e["url"].endswith("/booking-channel")]
    res["status"] = "arrived"
    await clinic.put("Appointment", rid, res)
    status, r, text = await get(
        client,
        "/reports/activity",
        clinic.provider["token"],
        **{"from": DAY, "to": "2027-01-05"},
    )
    assert status == 200, text
    rows = {row["day"]: row for row in (await r.json())["rows"]}
    assert rows[DAY]["bookings"]["by_channel"] == {"portal": 1}
    assert "2027-01-05" not in rows  # an update is not a second booking


async def test_waiting_room_size_and_waits(client: Any) -> None:
    """R-WAIT-3: the waiting room in the report: entries in and out, the assigned visit
    counted for the provider with the days its patient waited, and no patient data."""
    from tests.e2e.patient_support import at
    from tests.e2e.patient_support import clinic as patient_clinic
    from tests.e2e.patient_support import set_clock as set_patient_clock
    from tests.e2e.waiting_support import entered, entry_status, push_slot

    await set_patient_clock(client, NOW)
    krakow = await patient_clinic(client, [("far", at("2027-03-01", 10), "first-stable")])
    a, b = await patient(client), await patient(client)
    entry_a = await entered(client, a, await referral(client, a), city="Kraków")
    entry_b = await entered(
        client, b, await referral(client, b), city="Kraków", hours="14:00-16:00"
    )
    await set_patient_clock(client, warsaw(2027, 1, 5, 9))
    await push_slot(client, krakow, "new1", at("2027-01-12", 10))
    await entry_status(client, a, entry_a, "assigned")
    resp = await client.delete(f"/patient/v1/waiting-room/{entry_b}", headers=b.headers)
    assert resp.status in (200, 204), await resp.text()

    status, r, text = await get(
        client, "/reports/activity", krakow.token, **{"from": DAY, "to": "2027-01-05"}
    )
    assert status == 200, text
    assert a.pesel not in text and b.pesel not in text
    report = await r.json()
    wr = {w["day"]: w for w in report["waiting_room"] if w["scope"] == "cardiology"}
    assert (wr[DAY]["entered"], wr[DAY]["waiting_at_end_of_day"]) == (2, 2)
    day2 = wr["2027-01-05"]
    assert (day2["assigned"], day2["left"], day2["waiting_at_end_of_day"]) == (1, 1, 0)
    assert day2["wait_days_median"] == 1.0
    row = next(x for x in report["rows"] if x["day"] == "2027-01-05")
    assert row["waiting_room"] == {"assigned": 1, "wait_days_median": 1.0, "wait_days_max": 1.0}
    assert row["bookings"]["by_channel"] == {"waiting-room": 1}
    assert row["bookings"]["by_group"]["central"] == 1
