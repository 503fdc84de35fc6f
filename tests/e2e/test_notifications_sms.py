"""Cancel by SMS reply (issue 7, R-NOT-2): POST /channels/sms/inbound {from, text}.

The reply is matched by phone number and the visit's reference; the
cancellation is the patient portal's command with channel "sms" (reason
patient-sms), so the provider gets the change with channel "sms" (R-CAN-3).
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.http.keys import SERVICES
from tests.e2e.notify_support import (
    PHONE_DIGITS,
    Clinic,
    outbox,
    set_clock,
    settle,
    wait_outbox,
    warsaw,
)

NOW = warsaw(2027, 1, 4, 9)
VISIT = warsaw(2027, 1, 13, 8)
PESEL = "44051401458"


async def sms(client: Any, text: str, sender: str = "+48 600-100-200") -> dict[str, Any]:
    resp = await client.post("/channels/sms/inbound", json={"from": sender, "text": text})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def booked_ref(client: Any, pesel: str = PESEL, n: int = 1) -> str:
    msgs = await wait_outbox(client, n, pesel=pesel, channel="sms")
    ref = msgs[n - 1]["ref"]
    assert ref
    return str(ref)


async def test_reply_with_the_reference_cancels_the_visit_as_channel_sms(client: Any) -> None:
    services = client.server.app[SERVICES]
    seen: list[Any] = []

    async def keep(msg: Any) -> None:
        seen.append(msg)

    await services.bus.consume_events(
        "test-slice", ["resource.Appointment.*", "slot.released"], keep
    )
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", VISIT)
    await clinic.book("a1", "s1", PESEL, email=None)
    ref = await booked_ref(client)

    answer = await sms(client, f"anuluj {ref.lower()}, dziękuję")
    assert answer["result"] == "cancelled"
    assert answer["appointment_id"] == "a1"
    assert "13.01.2027 08:00" in answer["reply"]

    appt = await clinic.get("Appointment", "a1")
    assert appt["status"] == "cancelled"
    assert appt["cancelationReason"]["coding"][0]["code"] == "patient-sms"
    slot = await clinic.get("Slot", "s1")
    assert slot["status"] == "free"

    for _ in range(100):
        types = {m.type for m in seen}
        if {"slot.released", "resource.Appointment.updated"} <= types:
            break
        await asyncio.sleep(0.05)
    updated = [m for m in seen if m.type == "resource.Appointment.updated"]
    assert updated and updated[-1].body["channel"] == "sms"
    assert updated[-1].tenant == clinic.id
    released = [m for m in seen if m.type == "slot.released"]
    assert released[-1].body["channel"] == "sms"
    assert released[-1].body["reason"] == "patient-sms"

    msgs = await wait_outbox(client, 2, pesel=PESEL)
    assert [m["kind"] for m in msgs] == ["booked", "cancelled"]
    assert msgs[1]["to"] == PHONE_DIGITS

    # The same reply again (the SMS gateway retried it): nothing more happens.
    again = await sms(client, f"ANULUJ {ref}")
    assert again["result"] == "already-cancelled"
    await settle(client, 0.3)
    kinds = [m["kind"] for m in await outbox(client, to=PHONE_DIGITS)]
    assert kinds == ["booked", "cancelled", "sms-already-cancelled"]


async def test_bare_cancel_with_one_or_several_visits(client: Any) -> None:
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", VISIT)
    await clinic.slot("s2", VISIT.replace(day=14))
    await clinic.book("a1", "s1", PESEL, email=None)
    await clinic.book("a2", "s2", PESEL, email=None)
    ref1 = await booked_ref(client, n=1)
    await wait_outbox(client, 2, pesel=PESEL)

    answer = await sms(client, "ANULUJ")
    assert answer["result"] == "choose"
    assert "13.01 08:00" in answer["reply"] and "14.01 08:00" in answer["reply"]
    assert len(answer["choices"]) == 2 and ref1 in answer["choices"]
    choose = await wait_outbox(client, 1, kind="sms-choose")
    assert choose[0]["to"] == PHONE_DIGITS and choose[0]["text"] == answer["reply"]

    assert (await sms(client, f"ANULUJ {ref1}"))["result"] == "cancelled"
    await wait_outbox(client, 3, pesel=PESEL)
    for _ in range(100):  # the reference is retired once the cancellation is seen
        if (await sms(client, "ANULUJ"))["result"] != "choose":
            break
        await asyncio.sleep(0.05)
    assert (await clinic.get("Appointment", "a2"))["status"] == "cancelled"
    assert (await clinic.get("Appointment", "a1"))["status"] == "cancelled"


async def test_unclear_unknown_and_waiting_room_replies(client: Any) -> None:
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", VISIT)
    await clinic.book("a1", "s1", PESEL, email=None)
    ref = await booked_ref(client)

    help_answer = await sms(client, "Kiedy mam wizytę?")
    assert help_answer["result"] == "help"
    assert "ANULUJ" in help_answer["reply"] and "REZYGNUJE" in help_answer["reply"]
    sent = await wait_outbox(client, 1, kind="sms-help")
    assert sent[0]["text"] == help_answer["reply"]

    # Right code, wrong phone: not this sender's visit.
    other = await sms(client, f"ANULUJ {ref}", sender="+48 500 000 000")
    assert other["result"] == "not-found"
    assert (await sms(client, "ANULUJ ZZZZ"))["result"] == "not-found"

    # R-WAIT-6: REZYGNUJE leaves the waiting room; this number has no entry there.
    leave = await sms(client, "Rezygnuję")
    assert leave["result"] == "not-in-waiting-room"
    assert "IKP" in leave["reply"]

    assert (await clinic.get("Appointment", "a1"))["status"] == "booked"


async def test_inbound_input_errors_are_problem_json(client: Any) -> None:
    resp = await client.post("/channels/sms/inbound", json={"text": "ANULUJ"})
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    resp = await client.post("/channels/sms/inbound", json={"from": "abc", "text": "ANULUJ"})
    assert resp.status == 422
    assert (await resp.json())["code"] == "invalid-phone"
    # Form-encoded, as many SMS gateways send it.
    resp = await client.post("/channels/sms/inbound", data={"from": "600100200", "text": "POMOC"})
    assert resp.status == 200
    assert (await resp.json())["result"] == "help"


async def test_sms_cancellation_fires_the_providers_webhook(client: Any) -> None:
    """R-CAN-3 / R-SCHED-4: the facility learns of the SMS cancellation by its webhook."""
    from tests.e2e.webhook_support import notification_type, subscription

    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    resp = await client.post(
        "/fhir/Subscription", json=subscription("sandbox:inbox"), headers=clinic.h
    )
    assert resp.status == 201, await resp.text()
    await clinic.slot("s1", VISIT)
    await clinic.book("a1", "s1", PESEL, email=None)  # the provider's own: not echoed back
    ref = await booked_ref(client)
    assert (await sms(client, f"ANULUJ {ref}"))["result"] == "cancelled"

    appointments: list[dict[str, Any]] = []
    for _ in range(200):
        inbox = await (await client.get(f"/sandbox/inbox/{clinic.id}")).json()
        appointments = [
            entry["resource"]
            for d in inbox["deliveries"]
            if notification_type(d["body"]) == "event-notification"
            for entry in d["body"]["entry"][1:]
            if entry.get("resource", {}).get("resourceType") == "Appointment"
        ]
        if appointments:
            break
        await asyncio.sleep(0.05)
    assert [a["id"] for a in appointments] == ["a1"]
    assert appointments[0]["status"] == "cancelled"
    assert appointments[0]["cancelationReason"]["coding"][0]["code"] == "patient-sms"
