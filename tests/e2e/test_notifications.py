"""Patient notifications on the sandbox clock, on the embedded and RabbitMQ backends (issue 7).

R-NOT-1 (booking, cancellation, change), R-NOT-4 (channels from contact data),
R-NOT-2 (reminders 7 d and 1 d before, Warsaw days), exactly once per event.
"""

from __future__ import annotations

from typing import Any

from gateway.http.keys import SERVICES
from tests.e2e.notify_support import (
    EMAIL,
    PHONE_DIGITS,
    Clinic,
    new_patient,
    outbox,
    set_clock,
    settle,
    wait_outbox,
    warsaw,
)

NOW = warsaw(2027, 1, 4, 9)  # Monday
VISIT = warsaw(2027, 1, 13, 8)  # Wednesday next week, 08:00


async def test_booking_confirms_on_every_channel_the_contact_allows(client: Any) -> None:
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", VISIT)
    await clinic.slot("s2", VISIT.replace(hour=9))
    await clinic.slot("s3", VISIT.replace(hour=10))
    known = await new_patient(client)  # has a patient-channel account: push too
    await clinic.book("a1", "s1", known)

    msgs = await wait_outbox(client, 3, pesel=known)
    assert sorted(m["channel"] for m in msgs) == ["email", "push", "sms"]
    assert {m["kind"] for m in msgs} == {"booked"}
    by = {m["channel"]: m for m in msgs}
    assert by["sms"]["to"] == PHONE_DIGITS
    assert by["email"]["to"] == EMAIL
    sms = by["sms"]["text"]
    assert "13.01.2027 08:00" in sms and "kardiologia" in sms and "ANULUJ" in sms
    assert by["sms"]["ref"] and by["sms"]["ref"] in sms
    assert len(sms) <= 160 and sms.isascii()
    assert "Poradnia Kardiologiczna" in by["email"]["text"]
    assert "ul. Długa 5" in by["email"]["text"]
    for m in msgs:  # never the PESEL
        assert known not in m["text"] and known not in (m["subject"] or "")
        assert known not in m["to"]

    # Only an e-mail on the visit, unknown patient: one e-mail, nothing else.
    other = "02270812343"
    await clinic.book("a2", "s2", other, phone=None)
    msgs = await wait_outbox(client, 1, pesel=other)
    await settle(client, 0.3)
    msgs = await outbox(client, pesel=other)
    assert [m["channel"] for m in msgs] == ["email"]

    # Only a phone: one SMS.
    third = "44051401458"
    await clinic.book("a3", "s3", third, email=None)
    await wait_outbox(client, 1, pesel=third)
    await settle(client, 0.3)
    assert [m["channel"] for m in await outbox(client, pesel=third)] == ["sms"]

    # The outbox is cleared per patient.
    resp = await client.delete("/sandbox/outbox", params={"pesel": known})
    assert (await resp.json())["removed"] == 3
    assert await outbox(client, pesel=known) == []
    assert len(await outbox(client, pesel=third)) == 1


async def test_cancellation_and_change_are_notified(client: Any) -> None:
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", VISIT)
    await clinic.slot("s2", VISIT.replace(day=14))
    pesel = "44051401458"
    await clinic.book("a1", "s1", pesel, email=None)
    await wait_outbox(client, 1, pesel=pesel)

    await clinic.book("a1", "s2", pesel, email=None)  # moved to Thursday
    msgs = await wait_outbox(client, 2, pesel=pesel)
    assert [m["kind"] for m in msgs] == ["booked", "changed"]
    assert "14.01.2027 08:00" in msgs[1]["text"]

    await clinic.cancel("a1", "s2", pesel, email=None)
    msgs = await wait_outbox(client, 3, pesel=pesel)
    assert [m["kind"] for m in msgs] == ["booked", "changed", "cancelled"]
    assert "14.01.2027 08:00" in msgs[2]["text"]

    # A change nobody sees (a comment) sends nothing.
    res = clinic.appointment("s1", pesel, email=None)
    await clinic.slot("s3", VISIT.replace(day=15))
    await clinic.book("a9", "s3", pesel, email=None)
    await wait_outbox(client, 4, pesel=pesel)
    res = {**clinic.appointment("s3", pesel, email=None), "comment": "pierwsze piętro"}
    await clinic.put("Appointment", "a9", res)
    await settle(client)
    assert len(await outbox(client, pesel=pesel)) == 4


async def test_a_redelivered_event_sends_nothing_twice(client: Any) -> None:
    services = client.server.app[SERVICES]
    seen: list[Any] = []

    async def keep(msg: Any) -> None:
        seen.append(msg)

    await services.bus.consume_events("test-slice", ["resource.Appointment.*"], keep)
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", VISIT)
    pesel = await new_patient(client)
    await clinic.book("a1", "s1", pesel)
    assert len(await wait_outbox(client, 3, pesel=pesel)) == 3
    created = next(m for m in seen if m.type == "resource.Appointment.created")

    before = _sample(services, "notifications_total", channel="sms", outcome="duplicate")
    for _ in range(2):
        await services.bus.publish(created)  # the broker delivers it again
    await settle(client)
    assert len(await outbox(client, pesel=pesel)) == 3
    after = _sample(services, "notifications_total", channel="sms", outcome="duplicate")
    assert after - before == 2


async def test_a_failing_channel_is_retried_then_dead_lettered(client: Any) -> None:
    services = client.server.app[SERVICES]
    sms = services.notifier.senders["sms"]
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", VISIT)
    await clinic.slot("s2", VISIT.replace(hour=9))

    # One failure: the e-mail goes at once, the SMS on the retry; each once.
    sms.fail_next(1)
    await clinic.book("a1", "s1", "44051401458")
    msgs = await wait_outbox(client, 2, pesel="44051401458")
    assert sorted(m["channel"] for m in msgs) == ["email", "sms"]
    assert _sample(services, "notifications_total", channel="sms", outcome="failed") == 1
    assert _sample(services, "messages_retried_total", queue_kind="notification") >= 1

    # Failing for good: retried through every tier, then dead-lettered, e-mail sent once.
    sms.fail_next(100)
    await clinic.book("a2", "s2", "02270812343")
    await wait_outbox(client, 1, pesel="02270812343")
    for _ in range(100):
        if _sample(services, "notifications_dead_lettered_total", channel="sms"):
            break
        await settle(client, 0.1)
    assert _sample(services, "notifications_dead_lettered_total", channel="sms") == 1
    dead: list[Any] = []
    for _ in range(50):
        got = await services.bus.dead_letters()
        print(
            "DEADS",
            [(d.type, d.body, dict(d.headers)) for d in got],
            await services.bus.queue_depths() if hasattr(services.bus, "queue_depths") else None,
            id(services.bus),
        )
        dead += [d for d in got if d.type.endswith("created")]
        if dead:
            break
        await settle(client, 0.1)
    assert [d.body["id"] for d in dead] == ["a2"]
    assert [m["channel"] for m in await outbox(client, pesel="02270812343")] == ["email"]
    resp = await client.get("/metrics")
    text = await resp.text()
    assert 'notifications_dead_lettered_total{channel="sms"} 1.0' in text
    sms.fail_next(0)


def _sample(services: Any, name: str, **labels: str) -> float:
    value = services.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


async def test_portal_booking_and_cancellation_are_notified_too(client: Any) -> None:
    """R-NOT-1 holds in every channel: a booking and a cancellation made in IKP."""
    from tests.e2e import patient_support as ikp

    await ikp.set_clock(client)
    clinic = await ikp.clinic(client, [("s1", ikp.plus_days(9, 8), "first-stable")])
    who = await ikp.patient(client)
    ref = await ikp.referral(client, who)
    status, appt = await ikp.book(
        client, who, clinic.slots["s1"], ref, contact={"phone": "600100200", "email": EMAIL}
    )
    assert status == 201, appt
    msgs = await wait_outbox(client, 3, pesel=who.pesel)
    assert sorted(m["channel"] for m in msgs) == ["email", "push", "sms"]
    assert {m["kind"] for m in msgs} == {"booked"}

    status, body = await ikp.cancel(client, who, appt["id"])
    assert status == 200, body
    msgs = await wait_outbox(client, 6, pesel=who.pesel)
    assert sorted(m["kind"] for m in msgs) == ["booked"] * 3 + ["cancelled"] * 3
