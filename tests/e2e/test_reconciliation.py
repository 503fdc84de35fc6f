"""Reconciliation with the provider's AP-KOLCE-style export over HTTP (issue 9, R-SCHED-5).

On the embedded default and on RabbitMQ: a provider books visits with its own
identifiers, a patient books one in IKP; the export has planted differences
(one visit missing on each side, one at another time, one cancelled on the
provider's side only) and exactly those are reported, per scope and day.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from tests.e2e.conftest import new_provider
from tests.e2e.fhir_support import a_pesel
from tests.e2e.notify_support import Clinic, set_clock, warsaw
from tests.e2e.patient_support import book, patient, referral

NOW = warsaw(2027, 1, 4, 9)
VENDOR_VISIT = "https://vendor.example/visit"


async def scenario(client: Any) -> tuple[Clinic, str, dict[str, str]]:
    """Five visits booked by the facility (V1..V5 on 2027-01-13 and -14) and one in IKP."""
    await set_clock(client, NOW)
    clinic = await Clinic.open(client)
    times = {
        "V1": warsaw(2027, 1, 13, 8),
        "V2": warsaw(2027, 1, 13, 8, 20),
        "V3": warsaw(2027, 1, 13, 8, 40),
        "V4": warsaw(2027, 1, 14, 8),
        "V5": warsaw(2027, 1, 14, 8, 20),
    }
    pesels = {v: a_pesel() for v in times}
    for v, start in times.items():
        await clinic.slot(f"s-{v}", start, category="control")
        res = clinic.appointment(f"s-{v}", pesels[v])
        res["identifier"] = [{"system": VENDOR_VISIT, "value": v}]
        res.pop("basedOn")
        await clinic.put("Appointment", f"a-{v}", res)
    await clinic.slot("s-ikp", warsaw(2027, 1, 14, 9), category="first-stable")
    p = await patient(client)
    ref = await referral(client, p)
    status, body = await book(client, p, f"{clinic.id}~s-ikp", ref)
    assert status == 201, body
    ikp_id = body["id"].split("~", 1)[1]
    pesels["IKP"] = p.pesel
    return clinic, ikp_id, pesels


def export(rows: list[list[str]], sep: str = ";") -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, lineterminator="\r\n")
    w.writerow(["visit_id", "id_system", "scope", "start", "category", "status", "pesel"])
    w.writerows(rows)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


async def reconcile(client: Any, clinic: Clinic, body: bytes, **query: str) -> tuple[int, Any, str]:
    resp = await client.post(
        "/reports/reconciliation",
        data=body,
        params=query,
        headers={"Authorization": clinic.h["Authorization"], "Content-Type": "text/csv"},
    )
    text = await resp.text()
    return resp.status, resp, text


async def test_planted_differences_are_reported_exactly(client: Any, capsys: Any) -> None:
    clinic, ikp, pesels = await scenario(client)
    s = VENDOR_VISIT
    planted = export(
        [
            ["V1", s, "cardiology", "2027-01-13 08:00", "control", "booked", pesels["V1"]],
            # V2: the facility's system has it 20 minutes later
            ["V2", s, "cardiology", "2027-01-13 08:40", "control", "umówiona", pesels["V2"]],
            # V3: not in the export (missing on the provider's side)
            # V4: cancelled in the facility's system only
            ["V4", s, "1100", "14.01.2027 08:00", "control", "odwołana", pesels["V4"]],
            ["V5", "", "cardiology", "2027-01-14T08:20:00+01:00", "", "", pesels["V5"]],
            # the IKP visit, by the gateway's Appointment id
            [ikp, "", "cardiology", "2027-01-14 09:00", "first-stable", "booked", pesels["IKP"]],
            # V9: only in the export (missing in the gateway)
            ["V9", s, "cardiology", "2027-01-14 10:00", "control", "booked", ""],
        ]
    )
    status, _resp, text = await reconcile(client, clinic, planted)
    assert status == 200, text
    for p in pesels.values():
        assert p not in text  # PESELs are compared, never echoed
    result = json.loads(text)
    assert result["matches"] is False
    assert (result["from"], result["to"]) == ("2027-01-13", "2027-01-14")
    assert result["totals"] == {
        "provider_count": 5,  # V1 V2 V5 IKP V9 (V4 is cancelled there)
        "gateway_count": 6,  # V1..V5 and IKP
        "matching": 3,  # V1, V5, IKP
        "missing_in_gateway": 1,
        "missing_in_export": 1,
        "differing": 2,
    }
    days = {(d["scope"], d["day"]): d for d in result["days"]}
    assert set(days) == {("cardiology", "2027-01-13"), ("cardiology", "2027-01-14")}
    d13, d14 = days[("cardiology", "2027-01-13")], days[("cardiology", "2027-01-14")]
    assert (d13["provider_count"], d13["gateway_count"]) == (2, 3)
    assert (d14["provider_count"], d14["gateway_count"]) == (3, 3)
    assert [m["appointment"] for m in d13["missing_in_export"]] == ["a-V3"]
    assert d13["missing_in_export"][0]["identifier"] == "V3"
    assert [m["visit_id"] for m in d14["missing_in_gateway"]] == ["V9"]
    assert d13["missing_in_gateway"] == [] and d14["missing_in_export"] == []
    assert d13["differing"] == [
        {
            "visit_id": "V2",
            "line": 3,
            "appointment": "a-V2",
            "fields": [
                {
                    "field": "start",
                    "export": "2027-01-13T08:40:00+01:00",
                    "gateway": "2027-01-13T08:20:00+01:00",
                }
            ],
        }
    ]
    assert [(x["visit_id"], x["fields"]) for x in d14["differing"]] == [
        ("V4", [{"field": "status", "export": "cancelled", "gateway": "booked"}])
    ]
    assert result["rejected_rows"] == []

    # the same as CSV (one counts line per scope and day, one line per finding)
    status, resp, text = await reconcile(client, clinic, planted, format="csv")
    assert status == 200 and resp.content_type == "text/csv", text
    rows = list(csv.DictReader(io.StringIO(text)))
    kinds = sorted((r["kind"], r["visit_id"], r["field"]) for r in rows if r["kind"] != "counts")
    assert kinds == [
        ("differs", "V2", "start"),
        ("differs", "V4", "status"),
        ("missing-in-export", "V3", ""),
        ("missing-in-gateway", "V9", ""),
    ]
    counts = [
        (r["day"], r["provider_count"], r["gateway_count"]) for r in rows if r["kind"] == "counts"
    ]
    assert counts == [("2027-01-13", "2", "3"), ("2027-01-14", "3", "3")]

    # and the logs of all this carry no PESEL (they do log the requests)
    logs = capsys.readouterr()
    assert "/reports/reconciliation" in logs.out + logs.err
    for p in pesels.values():
        assert p not in logs.out + logs.err


async def test_a_matching_export_matches_and_bad_rows_are_named(client: Any) -> None:
    clinic, ikp, pesels = await scenario(client)
    s = VENDOR_VISIT
    rows = [
        ["V1", s, "cardiology", "2027-01-13 08:00", "control", "booked", pesels["V1"]],
        ["V2", s, "cardiology", "2027-01-13 08:20", "control", "booked", pesels["V2"]],
        ["V3", s, "cardiology", "2027-01-13 08:40", "control", "booked", pesels["V3"]],
        ["V4", s, "cardiology", "2027-01-14 08:00", "control", "booked", pesels["V4"]],
        ["V5", s, "cardiology", "2027-01-14 08:20", "control", "booked", pesels["V5"]],
        [ikp, "", "cardiology", "2027-01-14 09:00", "first-stable", "booked", pesels["IKP"]],
    ]
    status, _resp, text = await reconcile(client, clinic, export(rows, sep=","))
    assert status == 200, text
    result = json.loads(text)
    assert result["matches"] is True, result
    assert result["totals"]["matching"] == 6

    # another patient on V5 is a difference in "patient", without saying who
    other = [*rows[:4], [*rows[4][:-1], pesels["V1"]], *rows[5:]]
    result = json.loads((await reconcile(client, clinic, export(other)))[2])
    assert [(x["visit_id"], x["fields"]) for d in result["days"] for x in d["differing"]] == [
        ("V5", [{"field": "patient", "export": None, "gateway": None}])
    ]

    # rows that cannot be read are listed by line, and the result is not a match
    bad = [*rows, ["V7", s, "dermatology", "2027-01-14 11:00", "", "", ""]]
    bad += [
        ["V8", s, "cardiology", "jutro", "", "", ""],
        ["V9", s, "cardiology", "2027-01-14 12:00", "", "", "123"],
    ]
    status, _resp, text = await reconcile(client, clinic, export(bad))
    result = json.loads(text)
    assert result["matches"] is False
    assert [r["line"] for r in result["rejected_rows"]] == [8, 9, 10]
    assert "dermatology" in result["rejected_rows"][0]["error"]
    assert "123" not in result["rejected_rows"][2]["error"]

    # the answer as CSV by content negotiation too; a day range the wrong way round is refused
    resp = await client.post(
        "/reports/reconciliation",
        data=export(rows),
        headers={**clinic.h, "Content-Type": "text/csv", "Accept": "text/csv"},
    )
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert (await resp.text()).startswith("scope,day,kind,")
    status, _resp, text = await reconcile(
        client, clinic, export(rows), **{"from": "2027-01-14", "to": "2027-01-13"}
    )
    assert status == 400, text

    # a file without the required columns is refused as a whole
    status, _resp, text = await reconcile(client, clinic, b"id;when\n1;2027-01-13\n")
    assert status == 422 and "visit_id" in text


async def test_only_a_provider_reconciles_and_only_its_own_visits(client: Any) -> None:
    _clinic, _ikp, _pesels = await scenario(client)
    body = export([["V1", VENDOR_VISIT, "cardiology", "2027-01-13 08:00", "", "", ""]])
    other = await new_provider(client)
    resp = await client.post(
        "/reports/reconciliation",
        data=body,
        headers={"Authorization": f"Bearer {other['token']}", "Content-Type": "text/csv"},
    )
    result = await resp.json()
    # the other provider holds nothing: V1 is missing in *its* gateway data, and
    # nothing of the first provider's shows
    assert result["totals"]["gateway_count"] == 0
    assert result["totals"]["missing_in_gateway"] == 1
    resp = await client.post(
        "/reports/reconciliation", data=body, headers={"Content-Type": "text/csv"}
    )
    assert resp.status == 401
    resp = await client.post("/sandbox/payers", json={})
    payer = await resp.json()
    resp = await client.post(
        "/reports/reconciliation",
        data=body,
        headers={"Authorization": f"Bearer {payer['token']}", "Content-Type": "text/csv"},
    )
    assert resp.status == 403
