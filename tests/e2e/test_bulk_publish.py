"""The public slot feed (SMART Scheduling Links ``$bulk-publish``, issue 9) over HTTP.

Read without credentials, on the embedded default and on RabbitMQ. The feed
must never carry patient data, even when slots are booked: no PESEL, name,
phone or e-mail, no Appointment, no participant; a Slot is free or busy.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.notify_support import EMAIL, PHONE, Clinic, set_clock, warsaw
from tests.e2e.patient_support import book, patient, referral

NOW = warsaw(2027, 1, 4, 9)


async def read(client: Any, url: str) -> tuple[Any, list[dict[str, Any]]]:
    path = url.split("://", 1)[1].split("/", 1)[1]
    resp = await client.get("/" + path)
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    return resp, [json.loads(line) for line in text.splitlines() if line]


async def feed(
    client: Any, **query: str
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], str]:
    resp = await client.get("/$bulk-publish", params=query)
    assert resp.status == 200, await resp.text()
    assert "max-age" in resp.headers["Cache-Control"]
    manifest = await resp.json()
    files: dict[str, list[dict[str, Any]]] = {}
    raw = []
    for out in manifest["output"]:
        r, lines = await read(client, out["url"])
        assert r.headers["Content-Type"].startswith("application/fhir+ndjson")
        assert "max-age" in r.headers["Cache-Control"]
        # streamed as it is read from the store, not built whole first
        assert r.headers["Transfer-Encoding"] == "chunked"
        files[out["type"]] = lines
        raw.append(json.dumps(lines, ensure_ascii=False))
    return manifest, files, "\n".join(raw)


async def test_the_feed_shows_capacity_and_no_patient_data(client: Any) -> None:
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    await clinic.slot("s1", warsaw(2027, 1, 13, 8))
    await clinic.slot("s2", warsaw(2027, 1, 13, 9))
    await clinic.slot("s3", warsaw(2027, 1, 13, 10), category="control")
    await clinic.slot("past", warsaw(2027, 1, 3, 10))
    # one booked by the facility, one by a patient in IKP (contact data on both)
    await clinic.book("a1", "s1", "44051401458")
    p = await patient(client)
    status, body = await book(client, p, f"{clinic.id}~s2", await referral(client, p))
    assert status == 201, body

    manifest, files, raw = await feed(client)
    assert manifest["transactionTime"].startswith("2027-01-04T08:00")
    assert manifest["request"].endswith("/$bulk-publish")
    assert [o["type"] for o in manifest["output"]] == ["Location", "Schedule", "Slot"]
    assert manifest["error"] == []
    for secret in ("44051401458", p.pesel, PHONE, "600100200", "600 100 200", EMAIL):
        assert secret not in raw
    assert "Appointment" not in raw and "participant" not in raw

    mine = [s for s in files["Slot"] if s["id"].startswith(f"{clinic.id}.")]
    by_id = {s["id"].split(".", 1)[1]: s for s in mine}
    assert set(by_id) == {"s1", "s2", "s3"}  # the past slot is not offered
    assert {k: s["status"] for k, s in by_id.items()} == {"s1": "busy", "s2": "busy", "s3": "free"}
    for s in mine:
        assert set(s) <= {
            "resourceType",
            "id",
            "schedule",
            "status",
            "start",
            "end",
            "appointmentType",
        }
        assert s["schedule"]["reference"] == f"Schedule/{clinic.id}.sch1"
    schedule = next(s for s in files["Schedule"] if s["id"] == f"{clinic.id}.sch1")
    assert schedule["actor"] == [{"reference": f"Location/{clinic.id}.loc1"}]
    assert schedule["serviceType"][0]["coding"][0]["code"] == "cardiology"
    location = next(x for x in files["Location"] if x["id"] == f"{clinic.id}.loc1")
    assert location["address"]["city"] == "Kraków"

    # incremental: only what changed since a given instant
    await set_clock(client, warsaw(2027, 1, 5, 9))
    await clinic.slot("s4", warsaw(2027, 1, 14, 8))
    manifest, files, _raw = await feed(client, _since="2027-01-05T07:59:00Z")
    assert all("_since=" in o["url"] for o in manifest["output"])
    assert [s["id"] for s in files["Slot"]] == [f"{clinic.id}.s4"]
    assert files["Location"] == [] and files["Schedule"] == []
    resp = await client.get("/$bulk-publish", params={"_since": "yesterday"})
    assert resp.status == 400
    resp = await client.get("/bulk-publish/Appointment.ndjson")
    assert resp.status == 404
