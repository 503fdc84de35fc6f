"""Bad input on every FHIR endpoint (issue 3 item 4), on both backends: malformed JSON,
wrong resourceType, unknown elements, wrong content type, a body over the size limit,
missing, invalid or wrong-kind tokens. Always an OperationOutcome, never a 5xx, never a
stack trace; nothing is stored."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.http.app import create_app
from tests.e2e.conftest import purge_rabbit, settings_for, uses_rabbit
from tests.e2e.fhir_support import Fhir, location, slot, transaction

WRITES = [
    ("POST", "/fhir/Location"),
    ("POST", "/fhir/Slot"),
    ("PUT", "/fhir/Location/x1"),
    ("PUT", "/fhir/Appointment/x1"),
    ("POST", "/fhir"),
]
READS = [
    ("GET", "/fhir/Location"),
    ("GET", "/fhir/Slot/x1"),
    ("GET", "/fhir/Slot/x1/_history"),
    ("GET", "/fhir/Slot/x1/_history/1"),
    ("DELETE", "/fhir/Slot/x1"),
    ("GET", "/fhir/_async/x1"),
    ("DELETE", "/fhir/_async/x1"),
]


def assert_outcome(status: int, text: str, expected: int | tuple[int, ...]) -> dict[str, Any]:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert status in allowed, (status, text)
    assert "Traceback" not in text and 'File "' not in text
    body: dict[str, Any] = json.loads(text)
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"] and all(i["diagnostics"] for i in body["issue"])
    return body


async def send(
    client: Any, method: str, path: str, data: bytes | None, headers: dict[str, str]
) -> tuple[int, str]:
    resp = await client.request(method, path, data=data, headers=headers)
    return resp.status, await resp.text()


async def nothing_stored(fhir: Fhir) -> None:
    for rtype in ("Location", "Schedule", "Slot", "Appointment"):
        assert (await fhir.search(rtype))["total"] == 0, rtype


async def test_malformed_bodies_on_every_write(client: Any) -> None:
    fhir = await Fhir.new(client)
    bodies: list[tuple[bytes, int | tuple[int, ...]]] = [
        (b"{not json", 400),
        (b"", 400),
        (b"[]", 400),
        (b'"Location"', 400),
        (b"null", 400),
        (json.dumps({"resourceType": "Patient"}).encode(), 400),
        (json.dumps({"no": "type"}).encode(), 400),
        (b"\xff\xfe\x00", 400),
        (json.dumps({**location(), "bogus": 1}).encode(), 400),
        (json.dumps({**location(), "status": 5}).encode(), (400, 422)),
        (json.dumps({**location(), "address": "Kraków"}).encode(), 400),
        (b'{"resourceType": "Location", "status": "active", "status": "x"}', (400, 422)),
        (json.dumps({"resourceType": "Location", "name": "\u0000" * 3}).encode(), (201, 400)),
    ]
    for method, path in WRITES:
        for data, expected in bodies:
            status, text = await send(client, method, path, data, fhir.headers)
            if status in (200, 201):
                assert 201 in (expected if isinstance(expected, tuple) else (expected,))
                continue
            assert_outcome(status, text, expected)
    # the only bodies that could be stored are the harmless NUL-name Locations
    assert (await fhir.search("Slot"))["total"] == 0
    assert (await fhir.search("Appointment"))["total"] == 0


async def test_wrong_resource_type_and_unknown_elements_name_the_path(client: Any) -> None:
    fhir = await Fhir.new(client)
    status, text = await send(
        client, "POST", "/fhir/Location", json.dumps(slot("Schedule/x")).encode(), fhir.headers
    )
    body = assert_outcome(status, text, 400)
    assert body["issue"][0]["expression"] == ["Location.resourceType"]
    nested = {**location(), "address": {"city": "Kraków", "planet": "Earth"}}
    status, text = await send(
        client, "PUT", "/fhir/Location/x1", json.dumps(nested).encode(), fhir.headers
    )
    body = assert_outcome(status, text, 400)
    assert body["issue"][0]["expression"] == ["Location.address.planet"]
    await nothing_stored(fhir)


async def test_wrong_content_type_is_415(client: Any) -> None:
    fhir = await Fhir.new(client)
    data = json.dumps(location()).encode()
    for ctype in ("text/plain", "application/xml", "application/fhir+xml", None):
        headers = {"Authorization": fhir.headers["Authorization"]}
        if ctype:
            headers["Content-Type"] = ctype
        for method, path in WRITES:
            status, text = await send(client, method, path, data, headers)
            assert_outcome(status, text, 415)
    # the three JSON types are accepted, with a charset too
    for ctype in (
        "application/fhir+json",
        "application/json",
        "application/fhir+json; charset=utf-8",
    ):
        headers = {**fhir.headers, "Content-Type": ctype}
        status, text = await send(client, "POST", "/fhir/Location", data, headers)
        assert status == 201, (ctype, text)


async def test_missing_invalid_and_wrong_kind_tokens(client: Any) -> None:
    fhir = await Fhir.new(client)
    resp = await client.post("/sandbox/patients", json={})
    patient_token = (await resp.json())["token"]
    data = json.dumps(location()).encode()
    bad_headers: list[tuple[dict[str, str], int]] = [
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer not-a-token"}, 401),
        ({"Authorization": f"Basic {fhir.provider['token']}"}, 401),
        ({"Authorization": f"Bearer {fhir.provider['token']}x"}, 401),
        ({"Authorization": f"Bearer {patient_token}"}, 403),
    ]
    for extra, expected in bad_headers:
        headers = {"Content-Type": "application/fhir+json", **extra}
        for method, path in [*WRITES, *READS]:
            status, text = await send(client, method, path, data, headers)
            assert_outcome(status, text, expected)
            if expected == 401:
                resp = await client.request(method, path, data=data, headers=headers)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await nothing_stored(fhir)


async def test_unknown_endpoints_and_methods(client: Any) -> None:
    fhir = await Fhir.new(client)
    for method, path, expected in [
        ("GET", "/fhir/Patient", 404),
        ("GET", "/fhir/Patient/1", 404),
        ("POST", "/fhir/Location/x1", 405),
        ("PATCH", "/fhir/Location/x1", 405),
        ("GET", "/fhir/Location/x1/_history/1/extra", 404),
        ("GET", "/fhir/Location/bad%20id", 400),
        ("GET", "/fhir/Location/" + "a" * 65, 400),
        ("PUT", "/fhir/Location/" + "a" * 65, 400),
    ]:
        data = json.dumps(location()).encode() if method in ("PUT", "POST") else None
        status, text = await send(client, method, path, data, fhir.headers)
        assert_outcome(status, text, expected)


@pytest.fixture
async def small_client(backend: str, aiohttp_client: Callable[..., Any]) -> TestClient[Any, Any]:
    settings = settings_for(backend, max_body_bytes=2048)
    if uses_rabbit(backend):
        await purge_rabbit(settings)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return client


async def test_body_over_the_limit_is_413(small_client: Any) -> None:
    fhir = await Fhir.new(small_client)
    big_location = {**location(), "description": "x" * 4000}
    huge = {**location(), "description": "x" * 200_000}
    big_bundle = transaction(
        *(
            {"resource": location(), "request": {"method": "POST", "url": "Location"}}
            for _ in range(30)
        )
    )
    for method, path in WRITES:
        for body in (big_location, huge, big_bundle):
            data = json.dumps(body).encode()
            status, text = await send(small_client, method, path, data, fhir.headers)
            assert_outcome(status, text, 413)

    # chunked (no Content-Length) is counted too
    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000
        yield json.dumps(location()).encode()

    resp = await small_client.post("/fhir/Location", data=chunks(), headers=fhir.headers)
    assert_outcome(resp.status, await resp.text(), 413)
    # under the limit it works
    status, text = await send(
        small_client, "POST", "/fhir/Location", json.dumps(location()).encode(), fhir.headers
    )
    assert status == 201, text
    assert (await fhir.search("Location"))["total"] == 1
