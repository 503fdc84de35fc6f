"""Builders and a small HTTP helper for the FHIR provider API end-to-end tests.

The resources are the smallest ones the gateway accepts (see ``docs/examples``);
``Fhir`` wraps one provider's token around the test client and follows
``next`` links.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from gateway import pesel
from mappings import codes
from tests.e2e.conftest import auth, new_provider

WARSAW = ZoneInfo("Europe/Warsaw")
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
VENDOR = "http://example-vendor.pl/fhir/sid"
MONDAY = datetime(2027, 1, 11, 8, 0, tzinfo=WARSAW)
_rng = random.Random(20270111)


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


def a_pesel() -> str:
    born = date(1950, 1, 1) + timedelta(days=_rng.randrange(20000))
    return pesel.generate(born, _rng.choice(["female", "male"]), rng=_rng)


def scope_cc(scope: str = "cardiology") -> dict[str, Any]:
    return {"coding": [{"system": codes.SCOPE_SYSTEM, "code": scope}]}


def category_cc(category: str) -> dict[str, Any]:
    return {"coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": category}]}


def location(ident: str | None = None, city: str = "Kraków") -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Location",
        "status": "active",
        "name": "Poradnia Kardiologiczna",
        "address": {"line": ["ul. Długa 5"], "city": city, "postalCode": "31-147"},
    }
    if ident:
        res["identifier"] = [{"system": f"{VENDOR}/location", "value": ident}]
    return res


def schedule(
    location_ref: str, scope: str = "cardiology", ident: str | None = None
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Schedule",
        "active": True,
        "serviceType": [scope_cc(scope)],
        "actor": [{"reference": location_ref}],
    }
    if ident:
        res["identifier"] = [{"system": f"{VENDOR}/schedule", "value": ident}]
    return res


def slot(
    schedule_ref: str,
    start: datetime = MONDAY,
    *,
    minutes: int = 20,
    category: str | None = "first-stable",
    status: str = "free",
    scope: str = "cardiology",
    ident: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Slot",
        "serviceType": [scope_cc(scope)],
        "schedule": {"reference": schedule_ref},
        "status": status,
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=minutes)).isoformat(),
    }
    if category:
        res["appointmentType"] = category_cc(category)
    if ident:
        res["identifier"] = [{"system": f"{VENDOR}/slot", "value": ident}]
    return res


def appointment(
    slot_ref: str,
    patient: str | None = None,
    *,
    status: str = "booked",
    referral: str | None = "Ab12Cd34:1234",
    privileged: bool | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Appointment",
        "status": status,
        "slot": [{"reference": slot_ref}],
        "participant": [
            {
                "actor": {
                    "type": "Patient",
                    "identifier": {"system": codes.PESEL_SYSTEM, "value": patient or a_pesel()},
                },
                "status": "accepted",
            }
        ],
    }
    if referral:
        res["basedOn"] = [{"identifier": {"system": codes.E_REFERRAL_SYSTEM, "value": referral}}]
    if privileged is not None:
        res["extension"] = [{"url": codes.EXT_PRIVILEGED, "valueBoolean": privileged}]
    if reason:
        res["cancelationReason"] = {
            "coding": [{"system": codes.CANCELLATION_REASON_SYSTEM, "code": reason}]
        }
    return res


def entry(
    resource: dict[str, Any], full_url: str | None = None, *, if_none_exist: str | None = None
) -> dict[str, Any]:
    req: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        req["ifNoneExist"] = if_none_exist
    out: dict[str, Any] = {"resource": resource, "request": req}
    if full_url:
        out["fullUrl"] = full_url
    return out


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def path_of(url: str) -> str:
    """The path and query of an absolute URL (the test client takes paths)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def expressions(outcome: dict[str, Any]) -> list[str]:
    return [e for i in outcome.get("issue", []) for e in i.get("expression", [])]


class Fhir:
    """One provider's view of ``/fhir`` through the aiohttp test client."""

    def __init__(self, client: Any, provider: dict[str, Any]) -> None:
        self.client = client
        self.provider = provider
        self.id: str = provider["provider_id"]
        self.headers = auth(provider["token"])

    @classmethod
    async def new(cls, client: Any) -> Fhir:
        return cls(client, await new_provider(client))

    def h(self, **extra: str) -> dict[str, str]:
        return {**self.headers, **{k.replace("_", "-"): v for k, v in extra.items()}}

    async def call(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any, Any]:
        """``(status, json body or None, headers)``."""
        kwargs: dict[str, Any] = {"headers": self.h(**headers)}
        if body is not None:
            kwargs["data"] = json.dumps(body)
        resp = await self.client.request(method, path, **kwargs)
        text = await resp.text()
        data = json.loads(text) if text else None
        return resp.status, data, resp.headers

    async def create(self, resource: dict[str, Any], **headers: str) -> tuple[int, Any, Any]:
        return await self.call("POST", f"/fhir/{resource['resourceType']}", resource, **headers)

    async def created_id(self, resource: dict[str, Any]) -> str:
        status, body, _ = await self.create(resource)
        assert status == 201, body
        return str(body["id"])

    async def put(self, rtype: str, rid: str, resource: dict[str, Any], **headers: str) -> Any:
        return await self.call("PUT", f"/fhir/{rtype}/{rid}", resource, **headers)

    async def get(self, path: str, **headers: str) -> tuple[int, Any, Any]:
        return await self.call("GET", path, **headers)

    async def post_bundle(self, bundle: dict[str, Any], **headers: str) -> tuple[int, Any, Any]:
        return await self.call("POST", "/fhir", bundle, **headers)

    async def search(self, rtype: str, params: Any = ()) -> dict[str, Any]:
        resp = await self.client.get(f"/fhir/{rtype}", params=params, headers=self.headers)
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body

    async def search_ids(self, rtype: str, params: Any = ()) -> list[str]:
        """Every match's id, following ``next`` links to the end."""
        bundle = await self.search(rtype, params)
        ids = [e["resource"]["id"] for e in bundle.get("entry", [])]
        while nxt := next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None):
            bundle = await self.get(path_of(nxt))
            bundle = bundle[1]
            ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        return ids

    async def seed(self, slots: int = 3, *, category: str = "first-stable") -> dict[str, Any]:
        """A Location, a cardiology Schedule and ``slots`` free slots, 20 minutes apart."""
        loc = await self.created_id(location())
        sch = await self.created_id(schedule(f"Location/{loc}"))
        ids = []
        for n in range(slots):
            start = MONDAY + timedelta(minutes=20 * n)
            ids.append(await self.created_id(slot(f"Schedule/{sch}", start, category=category)))
        return {"location": loc, "schedule": sch, "slots": ids}


async def poll(fhir: Fhir, url: str, *, timeout: float = 15.0) -> tuple[list[int], Any, Any]:
    """Poll an async status URL until it stops answering 202: every status seen, last body."""
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body, headers = await fhir.get(path_of(url))
        seen.append(status)
        if status != 202:
            return seen, body, headers
        assert asyncio.get_running_loop().time() < deadline, "the async request never finished"
        await asyncio.sleep(0.02)
