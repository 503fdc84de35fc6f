"""The initial import over HTTP and with ``cer-gateway import`` (issue 9, R-SCHED-5).

On the embedded default and on RabbitMQ: a generated provider export (a
directory of NDJSON files with planted bad lines) and a transaction Bundle are
imported through the CLI; the error file names each rejected resource with its
file, line and reason; a second run changes nothing (no version, no event);
the import-day freeze refuses the provider's other writes with 423 until the
job ends (completed, cancelled, or stale), while patients still book; and a
CLI killed halfway resumes from the job's checkpoint without applying anything
twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from bench.import_data import write_dataset
from gateway import constants as c
from gateway import import_client
from gateway.http.app import create_app
from gateway.http.keys import SERVICES
from tests.e2e.conftest import auth, new_provider, purge_rabbit, settings_for, uses_rabbit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_BUNDLE = ROOT / "docs" / "examples" / "transaction-week-cardiology.json"
NDJSON = "application/fhir+ndjson"


async def app_client(
    backend: str, aiohttp_client: Callable[..., Any], **overrides: Any
) -> TestClient[Any, Any]:
    settings = settings_for(backend, **overrides)
    if uses_rabbit(backend):
        await purge_rabbit(settings)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return client


def dataset(directory: Path, appointments: int = 120) -> dict[str, int]:
    """A generated export plus three planted bad lines; returns what is valid."""
    counts = write_dataset(directory, appointments=appointments, seed=7, weeks=2)
    slots = sorted(directory.glob("03-slots-*.ndjson"))[0]
    with slots.open("ab") as f:
        f.write(b"this is not json\n")  # the line after the last slot
        bad = {
            "resourceType": "Slot",
            "id": "bad-slot",
            "schedule": {"reference": "Schedule/sch-00000"},
            "serviceType": [
                {
                    "coding": [
                        {"system": "http://cer-gateway.org/fhir/CodeSystem/scope", "code": "x"}
                    ]
                }
            ],
            "status": "free",
            "start": "2027-01-05T10:00:00+01:00",
            "end": "2027-01-05T09:00:00+01:00",
        }
        f.write(orjson.dumps(bad) + b"\n")
    appts = sorted(directory.glob("04-appointments-*.ndjson"))[0]
    first = orjson.loads(appts.read_bytes().split(b"\n", 1)[0])
    first["id"] = "bad-pesel"
    first["slot"] = [{"reference": "Slot/does-not-exist"}]
    first["participant"][0]["actor"]["identifier"]["value"] = "12345678901"
    with appts.open("ab") as f:
        f.write(orjson.dumps(first) + b"\n")
    return {
        "valid": counts.resources,
        "slots": counts.slots,
        "appointments": counts.appointments,
        "lines": counts.resources + 3,
    }


async def run_cli(client: TestClient[Any, Any], token: str, tmp: Path, *paths: Path) -> int:
    opts = import_client.Options(
        url=str(client.make_url("")).rstrip("/"),
        paths=tuple(str(p) for p in paths),
        token=token,
        chunk_size=40,
        state_file=str(tmp / "state.json"),
        errors_file=str(tmp / "errors.ndjson"),
        progress="plain",
    )
    return await import_client.run(opts)


async def total(client: TestClient[Any, Any], token: str, query: str) -> int:
    resp = await client.get(f"/fhir/{query}&_count=0", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return int((await resp.json())["total"])


async def events_published(client: TestClient[Any, Any]) -> float:
    services = client.app[SERVICES]
    # The relay publishes what the writes put in outboxes: wait until it is empty.
    for _ in range(200):
        if not await services.store.pending_events(1):
            break
        await asyncio.sleep(0.05)
    metric = services.metrics.messages_published_total.labels("event")
    return float(metric._value.get())


async def test_import_directory_twice_changes_nothing(
    backend: str, aiohttp_client: Callable[..., Any], tmp_path: Path, capsys: Any
) -> None:
    """R-SCHED-5: import, error file, then the same import again: no version, no event."""
    client = await app_client(backend, aiohttp_client)
    provider = await new_provider(client)
    token = provider["token"]
    data = dataset(tmp_path / "export")
    rc = await run_cli(client, token, tmp_path, tmp_path / "export")
    assert rc == 2  # some rejected
    out = capsys.readouterr().out
    assert f"created    {data['valid']:,}" in out
    assert "rejected   3" in out
    assert await total(client, token, "Slot?status=busy") == data["appointments"]
    assert await total(client, token, "Appointment?status=booked") == data["appointments"]
    assert await total(client, token, "Slot?") == data["slots"]

    errors = [json.loads(x) for x in (tmp_path / "errors.ndjson").read_text().splitlines()]
    assert len(errors) == 3
    where = []
    for outcome in errors:
        assert outcome["resourceType"] == "OperationOutcome"
        ext = {e["url"]: e for e in outcome["extension"][0]["extension"]}
        where.append((ext["file"]["valueString"], ext["line"]["valueInteger"]))
        assert outcome["issue"][0]["diagnostics"]
    slot_lines = data["slots"]
    assert where[0] == ("03-slots-0001.ndjson", slot_lines + 1)  # not JSON
    assert where[1] == ("03-slots-0001.ndjson", slot_lines + 2)  # end before start
    assert where[2][0] == "04-appointments-0001.ndjson"
    assert "PESEL" in json.dumps(errors[2]) or "Slot/does-not-exist" in json.dumps(errors[2])

    store = client.app[SERVICES].store
    tenant = provider["provider_id"]
    # Every version: the current ones (documents) and the superseded ones (history).
    versions = await store.count(c.RESOURCES, {"tenant": tenant}) + await store.count(
        c.HISTORY, {"tenant": tenant}
    )
    events = await events_published(client)
    rc = await run_cli(client, token, tmp_path, tmp_path / "export")
    assert rc == 2
    out = capsys.readouterr().out
    assert "created    0" in out and "updated    0" in out
    assert f"unchanged  {data['valid']:,}" in out
    assert (
        await store.count(c.RESOURCES, {"tenant": tenant})
        + await store.count(c.HISTORY, {"tenant": tenant})
        == versions
    )
    assert await events_published(client) == events


async def test_import_bundle_file(
    backend: str, aiohttp_client: Callable[..., Any], tmp_path: Path, capsys: Any
) -> None:
    """A transaction Bundle's entries: urn:uuid references resolved, idempotent."""
    client = await app_client(backend, aiohttp_client)
    provider = await new_provider(client)
    token = provider["token"]
    entries = len(json.loads(EXAMPLE_BUNDLE.read_text())["entry"])
    assert await run_cli(client, token, tmp_path, EXAMPLE_BUNDLE) == 0
    assert f"created    {entries}" in capsys.readouterr().out
    resp = await client.get("/fhir/Slot?_count=1", headers=auth(token))
    slot = (await resp.json())["entry"][0]["resource"]
    schedule_ref = slot["schedule"]["reference"]
    assert schedule_ref.startswith("Schedule/")
    assert (await client.get(f"/fhir/{schedule_ref}", headers=auth(token))).status == 200
    assert await run_cli(client, token, tmp_path, EXAMPLE_BUNDLE) == 0
    assert f"unchanged  {entries}" in capsys.readouterr().out


async def start_job(client: TestClient[Any, Any], token: str) -> str:
    resp = await client.post("/fhir/$import", headers=auth(token))
    assert resp.status == 202, await resp.text()
    return str(resp.headers["Content-Location"])


LOCATION = {
    "resourceType": "Location",
    "status": "active",
    "name": "Poradnia",
    "address": {"city": "Kraków", "postalCode": "31-000"},
}


async def test_freeze_refuses_then_accepts(
    backend: str, aiohttp_client: Callable[..., Any]
) -> None:
    """R-SCHED-5: nothing in the schedule changes during the import; 423 names the job."""
    client = await app_client(backend, aiohttp_client)
    provider = await new_provider(client)
    other = await new_provider(client)
    token = provider["token"]
    url = await start_job(client, token)
    path = url.split("://", 1)[1].split("/", 1)[1]

    resp = await client.post("/fhir/Location", headers=auth(token), json=LOCATION)
    assert resp.status == 423
    outcome = await resp.json()
    issue = outcome["issue"][0]
    assert issue["code"] == "lock-error"
    assert url in issue["diagnostics"] and "import" in issue["diagnostics"]
    # Another provider is not frozen; a second import of this one is refused.
    resp = await client.post("/fhir/Location", headers=auth(other["token"]), json=LOCATION)
    assert resp.status == 201
    resp = await client.post("/fhir/$import", headers=auth(token))
    assert resp.status == 409
    assert url in (await resp.text())
    # A bundle is refused whole, too.
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": LOCATION, "request": {"method": "POST", "url": "Location"}}],
    }
    resp = await client.post("/fhir", headers=auth(token), json=bundle)
    assert resp.status == 423

    resp = await client.post(f"/{path}/$complete", headers=auth(token))
    assert resp.status == 200 and (await resp.json())["status"] == "completed"
    resp = await client.post("/fhir/Location", headers=auth(token), json=LOCATION)
    assert resp.status == 201

    url = await start_job(client, token)
    path = url.split("://", 1)[1].split("/", 1)[1]
    resp = await client.delete(f"/{path}", headers=auth(token))
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    resp = await client.post("/fhir/Location", headers=auth(token), json=LOCATION)
    assert resp.status == 201
    # A chunk for an ended job is refused.
    resp = await client.post(
        f"/{path}?seq=1&first=1&file_index=0",
        headers={**auth(token), "Content-Type": NDJSON},
        data=b"{}\n",
    )
    assert resp.status == 409


async def test_stale_import_unfreezes(aiohttp_client: Callable[..., Any]) -> None:
    """R-SCHED-5: a client that stopped sending does not freeze the provider for ever."""
    client = await app_client("embedded", aiohttp_client, import_stale_seconds=0.5)
    provider = await new_provider(client)
    token = provider["token"]
    url = await start_job(client, token)
    assert (await client.post("/fhir/Location", headers=auth(token), json=LOCATION)).status == 423
    await asyncio.sleep(0.7)
    assert (await client.post("/fhir/Location", headers=auth(token), json=LOCATION)).status == 201
    path = url.split("://", 1)[1].split("/", 1)[1]
    body = await (await client.get(f"/{path}", headers=auth(token))).json()
    assert body["status"] == "failed" and body["reason"].startswith("stale")


async def test_patients_book_during_the_freeze(aiohttp_client: Callable[..., Any]) -> None:
    """R-SCHED-5 binds the facility's schedule; patients keep booking through CeR (R-SCHED-4)."""
    client = await app_client("embedded", aiohttp_client)
    provider = await new_provider(client)
    token = provider["token"]
    await client.post("/sandbox/clock", json={"set": "2027-01-04T07:00:00+01:00"})
    body = json.loads(EXAMPLE_BUNDLE.read_text())
    resp = await client.post("/fhir", headers=auth(token), json=body)
    assert resp.status == 200, await resp.text()
    await start_job(client, token)
    patient = await (
        await client.post("/sandbox/patients", json={"sex": "female", "birth_date": "1970-05-01"})
    ).json()
    ref = await (
        await client.post(
            "/sandbox/referrals", json={"pesel": patient["pesel"], "scope": "cardiology"}
        )
    ).json()
    pt = {"Authorization": f"Bearer {patient['token']}"}
    found = await (
        await client.get("/patient/v1/slots?scope=cardiology&limit=1", headers=pt)
    ).json()
    assert found["slots"], found
    resp = await client.post(
        "/patient/v1/appointments",
        headers=pt,
        json={
            "slot_id": found["slots"][0]["id"],
            "referral": {"key": ref["key"], "code": ref["code"]},
            "contact": {"phone": "+48 600 100 200"},
        },
    )
    assert resp.status == 201, await resp.text()


async def test_chunk_input_errors(aiohttp_client: Callable[..., Any]) -> None:
    client = await app_client("embedded", aiohttp_client)
    meta = await (await client.get("/fhir/metadata")).json()
    assert {"import"} <= {o["name"] for o in meta["rest"][0].get("operation", [])}
    provider = await new_provider(client)
    other = await new_provider(client)
    url = await start_job(client, provider["token"])
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    nd = {**auth(provider["token"]), "Content-Type": NDJSON}
    assert (await client.post(f"{path}?first=1&file_index=0", headers=nd, data=b"")).status == 400
    resp = await client.post(
        f"{path}?seq=1&first=1&file_index=0", headers=auth(provider["token"]), data=b"{}"
    )
    assert resp.status == 415
    resp = await client.get(path, headers=auth(other["token"]))
    assert resp.status == 404  # another provider's job
    resp = await client.get(path, headers=auth(provider["token"]))
    assert resp.status == 202 and "X-Progress" in resp.headers


async def test_kill_halfway_and_resume(
    backend: str, aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """The CLI killed (SIGKILL) after some chunks resumes from the job's checkpoint:
    every line read once, nothing applied twice (R-SCHED-5)."""
    client = await app_client(backend, aiohttp_client)
    provider = await new_provider(client)
    token = provider["token"]
    counts = write_dataset(tmp_path / "export", appointments=400, seed=11, weeks=2)
    state = tmp_path / "state.json"
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "import",
        "--url",
        str(client.make_url("")).rstrip("/"),
        "--token",
        token,
        "--chunk-size",
        "25",
        "--state",
        str(state),
        "--errors",
        str(tmp_path / "errors.ndjson"),
        str(tmp_path / "export"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    seq = 0
    for _ in range(1200):
        await asyncio.sleep(0.05)
        try:
            seq = json.loads(state.read_text())["checkpoint"]["seq"]
        except (OSError, ValueError, TypeError, KeyError):
            seq = 0
        if seq >= 8 or proc.returncode is not None:
            break
    assert proc.returncode is None, "the import ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    job_url = json.loads(state.read_text())["status_url"]
    path = "/" + job_url.split("://", 1)[1].split("/", 1)[1]
    halfway = await (await client.get(path, headers=auth(token))).json()
    assert halfway["status"] == "in-progress"
    assert 0 < halfway["counts"]["read"] < counts.resources
    # The freeze holds while the killed import is pending.
    assert (await client.post("/fhir/Location", headers=auth(token), json=LOCATION)).status == 423

    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, stderr.decode()
    assert "resuming import" in stderr.decode()
    summary = stdout.decode()
    assert f"read       {counts.resources:,}" in summary
    assert f"created    {counts.resources:,}" in summary
    assert "unchanged  0" in summary and "rejected   0" in summary
    assert "resources/s" in summary and "time" in summary
    assert not state.exists()  # completed: the next run is a new import
    store = client.app[SERVICES].store
    tenant = provider["provider_id"]
    # One version per resource, two for each booked slot (created, then booked): the
    # current ones are the documents, the history holds the booked slots' first.
    assert await store.count(c.RESOURCES, {"tenant": tenant}) == counts.resources
    assert await store.count(c.HISTORY, {"tenant": tenant}) == counts.appointments
    assert await total(client, token, "Appointment?status=booked") == counts.appointments
    assert (await client.post("/fhir/Location", headers=auth(token), json=LOCATION)).status == 201


@pytest.mark.parametrize("backend", ["embedded"])
async def test_cli_plain_progress_lines(
    backend: str, aiohttp_client: Callable[..., Any], tmp_path: Path, capsys: Any
) -> None:
    """Off a terminal the CLI prints plain progress lines, not a bar."""
    client = await app_client(backend, aiohttp_client)
    provider = await new_provider(client)
    write_dataset(tmp_path / "export", appointments=30, seed=3, weeks=1)
    assert await run_cli(client, provider["token"], tmp_path, tmp_path / "export") == 0
    err = capsys.readouterr().err
    assert "import: " in err and "resources/s" in err and "\r" not in err


async def test_cli_signs_in_with_the_providers_key(
    aiohttp_client: Callable[..., Any], tmp_path: Path, capsys: Any
) -> None:
    """``--client-id`` and ``--key``: the CLI gets its token with a signed assertion."""
    client = await app_client("embedded", aiohttp_client)
    provider = await new_provider(client)
    key = tmp_path / "key.pem"
    key.write_text(provider["private_key_pem"])
    opts = import_client.Options(
        url=str(client.make_url("")).rstrip("/"),
        paths=(str(EXAMPLE_BUNDLE),),
        client_id=provider["client_id"],
        key_file=str(key),
        state_file=str(tmp_path / "state.json"),
        errors_file=str(tmp_path / "errors.ndjson"),
        progress="none",
    )
    assert await import_client.run(opts) == 0
    assert "Import " in capsys.readouterr().out
    assert await total(client, provider["token"], "Slot?") == 60
