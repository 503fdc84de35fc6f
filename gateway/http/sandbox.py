"""Sandbox endpoints (only when ``CER_MODE=sandbox``): test providers, patients, clock."""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

import isodate
import orjson
from aiohttp import web

from adapters.clock import SandboxClock
from gateway import conformance, patients, pesel
from gateway import constants as c
from gateway import subscriptions as subs
from gateway.auth import Principal, generate_client_keypair
from gateway.bootstrap import Services, save_clock
from gateway.errors import FhirError, Issue
from gateway.events import new_id
from gateway.http.keys import SERVICES
from gateway.http.responses import json_response
from gateway.notifications import normalize_phone
from gateway.sandbox import reset as sandbox_reset
from gateway.schema import INDEXES
from gateway.timeutil import from_store, parse_instant, to_fhir, to_store
from mappings import codes
from mappings.validation import parse_json


async def _json(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    if not body:
        return {}
    data = parse_json(body)
    if not isinstance(data, dict):
        raise FhirError(400, [Issue("structure", "send a JSON object")])
    return data


async def create_provider(request: web.Request) -> web.Response:
    data = await _json(request)
    return json_response(await make_provider(request.app[SERVICES], data.get("name")), 201)


async def make_provider(services: Services, name: Any = None) -> dict[str, Any]:
    """A test provider with its client credentials (``private_key_pem``) and a ready token."""
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise FhirError(
            400, [Issue("value", "name must be a string of at most 200 characters", ["name"])]
        )
    provider_id = f"prov-{new_id()[:12]}"
    client_id = f"client-{new_id()[:16]}"
    private_pem, public_pem = generate_client_keypair()
    await services.store.insert(
        c.PROVIDERS,
        {
            "_id": provider_id,
            "client_id": client_id,
            "name": name or f"Sandbox provider {provider_id[-6:]}",
            "public_key_pem": public_pem,
            "sandbox": True,
            "created": to_store(services.clock.now()),
        },
    )
    token = services.tokens.issue(Principal("provider", provider_id))
    return {
        "provider_id": provider_id,
        "client_id": client_id,
        "private_key_pem": private_pem,
        "token": token,
        "token_endpoint": "/auth/token",
    }


async def create_payer(request: web.Request) -> web.Response:
    """A test payer (NFZ) client: it reads every provider's reports (issue 9), writes nothing."""
    services = request.app[SERVICES]
    await _json(request)
    payer_id = f"payer-{new_id()[:12]}"
    client_id = f"client-{new_id()[:16]}"
    private_pem, public_pem = generate_client_keypair()
    await services.store.insert(
        c.PROVIDERS,
        {
            "_id": payer_id,
            "client_id": client_id,
            "role": "payer",
            "name": "Sandbox payer (NFZ)",
            "public_key_pem": public_pem,
            "sandbox": True,
            "created": to_store(services.clock.now()),
        },
    )
    return json_response(
        {
            "payer_id": payer_id,
            "client_id": client_id,
            "private_key_pem": private_pem,
            "token": services.tokens.issue(Principal("payer", payer_id)),
            "token_endpoint": "/auth/token",
        },
        201,
    )


async def create_patient(request: web.Request) -> web.Response:
    data = await _json(request)
    return json_response(await make_patient(request.app[SERVICES], data), 201)


async def make_patient(services: Services, data: dict[str, Any]) -> dict[str, Any]:
    """``{birth_date?, sex?}`` -> a synthetic patient: a valid PESEL of that birth date and
    sex (random when not given) and a patient token."""
    rng = random.Random(secrets.randbits(64))
    try:
        born = (
            date.fromisoformat(data["birth_date"])
            if data.get("birth_date")
            else date(rng.randint(1950, 2005), rng.randint(1, 12), rng.randint(1, 28))
        )
    except (TypeError, ValueError) as exc:
        raise FhirError(
            400, [Issue("value", "birth_date must be YYYY-MM-DD", ["birth_date"])]
        ) from exc
    sex = data.get("sex") or rng.choice(["female", "male"])
    if sex not in ("female", "male"):
        raise FhirError(400, [Issue("value", "sex must be 'female' or 'male'", ["sex"])])
    if not date(1800, 1, 1) <= born <= date(2299, 12, 31):
        raise FhirError(
            400, [Issue("value", "birth_date must be between 1800 and 2299", ["birth_date"])]
        )
    for _ in range(20):
        number = pesel.generate(born, sex, rng=rng)
        if await services.store.get(c.PATIENTS, number) is None:
            break
    await services.store.update_one(
        c.PATIENTS,
        {"_id": number},
        {
            "$set": {"birth_date": born.isoformat(), "sex": sex, "sandbox": True},
            "$setOnInsert": {"created": to_store(services.clock.now())},
        },
        upsert=True,
    )
    token = services.tokens.issue(Principal("patient", number))
    return {"pesel": number, "birth_date": born.isoformat(), "sex": sex, "token": token}


def sandbox_clock(services: Services) -> SandboxClock:
    clock = services.clock
    assert isinstance(clock, SandboxClock)
    return clock


def clock_state(services: Services) -> dict[str, Any]:
    clock = sandbox_clock(services)
    return {"now": to_fhir(clock.now()), "offset_seconds": clock.offset.total_seconds()}


async def get_clock(request: web.Request) -> web.Response:
    return json_response(clock_state(request.app[SERVICES]))


async def set_clock(request: web.Request) -> web.Response:
    data = await _json(request)
    return json_response(await move_clock(request.app[SERVICES], data))


async def move_clock(services: Services, data: dict[str, Any]) -> dict[str, Any]:
    """``{set: instant}`` or ``{advance: ISO duration}``; shared with the other processes."""
    clock = sandbox_clock(services)
    if ("set" in data) == ("advance" in data):
        raise FhirError(400, [Issue("invalid", "send exactly one of {set} or {advance}")])
    field = "set" if "set" in data else "advance"
    try:
        if "set" in data:
            clock.set(parse_instant(str(data["set"])))
        else:
            delta = isodate.parse_duration(str(data["advance"]))
            if not isinstance(delta, timedelta):
                delta = delta.totimedelta(start=clock.now())
            clock.advance(delta)
    except (ValueError, isodate.ISO8601Error) as exc:
        raise FhirError(
            400,
            [
                Issue(
                    "value",
                    f"{exc}; use an ISO datetime with offset or a duration like P1DT2H",
                    [field],
                )
            ],
        ) from exc
    await save_clock(services)
    return clock_state(services)


async def reset(request: web.Request) -> web.Response:
    """``POST /sandbox/reset`` ``{provider_id?}``: one provider's data, or everything."""
    data = await _json(request)
    provider = data.get("provider_id")
    if provider is not None and not isinstance(provider, str):
        raise FhirError(400, [Issue("value", "provider_id must be a string", ["provider_id"])])
    return json_response(await reset_data(request.app[SERVICES], provider))


async def reset_data(services: Services, provider: str | None) -> dict[str, Any]:
    """One provider's data (and the provider), or everything and the clock back to real time."""
    removed = await sandbox_reset(services.store, INDEXES.keys(), provider)
    if provider is None:
        sandbox_clock(services).set_offset(timedelta(0))
        await save_clock(services)
    return {"reset": provider or "everything", "removed": removed}


def _outbox_filter(request: web.Request) -> dict[str, Any]:
    return outbox_filter(request.query)


def outbox_filter(query: Mapping[str, str]) -> dict[str, Any]:
    """``?pesel=&channel=&kind=&appointment_id=&to=``: one patient's messages, or all."""
    flt: dict[str, Any] = {}
    for name in ("pesel", "channel", "kind", "appointment_id"):
        value = query.get(name)
        if value:
            flt[name] = value
    to = query.get("to")
    if to:
        flt["to"] = normalize_phone(to) if "@" not in to and normalize_phone(to) else to
    return flt


async def get_outbox(request: web.Request) -> web.Response:
    """``GET /sandbox/outbox``: notifications (SMS / e-mail / push) sent, oldest first."""
    messages = await outbox_messages(request.app[SERVICES], _outbox_filter(request))
    return json_response({"count": len(messages), "messages": messages})


async def outbox_messages(
    services: Services, flt: dict[str, Any], *, newest_first: bool = False
) -> list[dict[str, Any]]:
    """The captured notifications matching ``flt`` (at most 1000)."""
    order = -1 if newest_first else 1
    docs = await services.store.find(
        c.SANDBOX_OUTBOX, flt, sort=[("at", order), ("_id", order)], limit=1000
    )
    return [
        {
            "id": d["_id"],
            "channel": d["channel"],
            "to": d["to"],
            "subject": d.get("subject") or None,
            "text": d["text"],
            "kind": d.get("kind"),
            "appointment_id": d.get("appointment_id"),
            "ref": d.get("ref"),
            "at": to_fhir(from_store(d["at"])),
        }
        for d in docs
    ]


async def clear_outbox(request: web.Request) -> web.Response:
    """``DELETE /sandbox/outbox`` (same filters): forget captured messages."""
    removed = await forget_outbox(request.app[SERVICES], _outbox_filter(request))
    return json_response({"removed": removed})


async def forget_outbox(services: Services, flt: dict[str, Any]) -> int:
    return await services.store.delete_many(c.SANDBOX_OUTBOX, flt)


async def create_referral(request: web.Request) -> web.Response:
    """``POST /sandbox/referrals`` ``{pesel, scope, category?, privileged?, status?}`` ->
    ``{key, code}``.

    An e-referral as P1 would hold it (R-PAT-2): key (*klucz*), 4-digit code
    (*kod*), the patient, the scope and the medical category (``urgent`` or
    ``stable``, default ``stable``). ``status`` (default ``issued``) can make a
    referral that is already ``realized``, ``cancelled`` or ``expired``.
    """
    data = await _json(request)
    return json_response(await make_referral(request.app[SERVICES], data), 201)


async def make_referral(services: Services, data: dict[str, Any]) -> dict[str, Any]:
    """See ``create_referral``; ``data`` as its JSON body."""
    number, scope = _patient_and_scope(data)
    info = codes.scopes()[scope]
    if not info.referral_required_first_time:
        raise FhirError(
            400,
            [Issue("value", f"{scope} needs no e-referral (R-PAT-3); nothing to issue", ["scope"])],
        )
    category = data.get("category", "stable")
    if category not in ("urgent", "stable"):
        raise FhirError(
            400, [Issue("value", "category must be 'urgent' or 'stable'", ["category"])]
        )
    privileged = data.get("privileged", False)
    if not isinstance(privileged, bool):
        raise FhirError(400, [Issue("value", "privileged must be true or false", ["privileged"])])
    status = data.get("status", patients.REFERRAL_ISSUED)
    if status not in patients.REFERRAL_STATUSES or status == patients.REFERRAL_BOOKED:
        raise FhirError(
            400,
            [
                Issue(
                    "value",
                    "status must be one of issued, realized, cancelled, expired",
                    ["status"],
                )
            ],
        )
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    key = "".join(secrets.choice(alphabet) for _ in range(20))
    code = f"{secrets.randbelow(10000):04d}"
    await services.store.insert(
        c.REFERRALS,
        {
            "_id": key,
            "key": key,
            "code": code,
            "pesel": number,
            "scope": scope,
            "category": category,
            # An out-of-turn entitlement the issuer verified (R-PAT-5): the waiting
            # room honours it in the queue (R-WAIT-5).
            "privileged": privileged,
            "status": status,
            "appointment_id": None,
            "issued": to_store(services.clock.now()),
            "sandbox": True,
        },
    )
    return {"key": key, "code": code, "scope": scope, "category": category, "status": status}


async def create_screening(request: web.Request) -> web.Response:
    """``POST /sandbox/screenings`` ``{pesel, scope, date, hpv?}``: an exam done on ``date``.

    The screening history the embedded SIMP judges eligibility from (R-PAT-3):
    mammography every 2 years, cytology every 3 (5 after an HPV test).
    """
    data = await _json(request)
    return json_response(await make_screening(request.app[SERVICES], data), 201)


async def make_screening(services: Services, data: dict[str, Any]) -> dict[str, Any]:
    """See ``create_screening``; ``data`` as its JSON body."""
    number, scope = _patient_and_scope(data)
    if codes.scopes()[scope].screening is None:
        raise FhirError(400, [Issue("value", f"{scope} is not a screening programme", ["scope"])])
    try:
        day = date.fromisoformat(str(data.get("date")))
    except ValueError as exc:
        raise FhirError(400, [Issue("value", "date must be YYYY-MM-DD", ["date"])]) from exc
    hpv = data.get("hpv", False)
    if not isinstance(hpv, bool):
        raise FhirError(400, [Issue("value", "hpv must be true or false", ["hpv"])])
    if hpv and scope != "cytology":
        raise FhirError(400, [Issue("value", "an HPV test is a cytology screening", ["hpv"])])
    doc = {
        "_id": f"done|{new_id()}",
        "pesel": number,
        "scope": scope,
        "date": day.isoformat(),
        "hpv": hpv,
        "status": "done",
        "sandbox": True,
    }
    await services.store.insert(c.SCREENINGS, doc)
    return {"id": doc["_id"], "scope": scope, "date": doc["date"], "hpv": hpv}


def _patient_and_scope(data: dict[str, Any]) -> tuple[str, str]:
    number = data.get("pesel")
    if not isinstance(number, str) or not number:
        raise FhirError(400, [Issue("required", "pesel is required", ["pesel"])])
    try:
        pesel.validate(number)
    except ValueError as exc:
        raise FhirError(400, [Issue("value", str(exc), ["pesel"])]) from exc
    scope = data.get("scope")
    if scope not in codes.scopes():
        raise FhirError(
            400,
            [Issue("value", f"scope must be one of {', '.join(codes.scopes())}", ["scope"])],
        )
    return number, str(scope)


async def get_inbox(request: web.Request) -> web.Response:
    """``GET /sandbox/inbox/{provider_id}``: webhook deliveries to ``sandbox:inbox``, oldest
    first, each with its Standard Webhooks headers and the exact body they sign
    (``raw_body``); ``?subscription=`` narrows to one subscription."""
    services = request.app[SERVICES]
    flt: dict[str, Any] = {"tenant": request.match_info["provider_id"]}
    if request.query.get("subscription"):
        flt["subscription"] = request.query["subscription"]
    docs = await services.store.find(c.SANDBOX_INBOX, flt, sort=[("at", 1)], limit=1000)
    deliveries = [
        {
            "id": d["_id"],
            "at": d["at"],
            "subscription": d["subscription"],
            "webhook_id": d["webhook_id"],
            "headers": d["headers"],
            "body": d["body"],
            "raw_body": d["raw_body"],
        }
        for d in docs
    ]
    return json_response(
        {
            "provider_id": request.match_info["provider_id"],
            "count": len(deliveries),
            "deliveries": deliveries,
        }
    )


async def clear_inbox(request: web.Request) -> web.Response:
    """``DELETE /sandbox/inbox/{provider_id}``: forget the provider's captured deliveries."""
    removed = await forget_inbox(request.app[SERVICES], request.match_info["provider_id"])
    return json_response({"removed": removed})


async def forget_inbox(services: Services, provider: str) -> int:
    return await services.store.delete_many(c.SANDBOX_INBOX, {"tenant": provider})


async def run_conformance(request: web.Request) -> web.Response:
    """``POST /sandbox/conformance/{provider_id}``: the provider's data and webhook endpoint
    checked (``gateway.conformance``); a report with pass / fail / skipped and how to fix."""
    services = request.app[SERVICES]
    provider = request.match_info["provider_id"]
    if await services.store.get(c.PROVIDERS, provider) is None:
        raise FhirError(404, [Issue("not-found", f"no provider {provider}")], code="not-found")
    return json_response(await conformance_report(services, provider))


async def conformance_report(services: Services, provider: str) -> dict[str, Any]:
    """The provider's data and webhook endpoint checked now (``gateway.conformance``)."""
    now = services.clock.now()
    live = {"tenant": provider, "deleted": False}
    schedules = await services.store.find(c.RESOURCES, {**live, "type": "Schedule"})
    slots = await services.store.find(c.RESOURCES, {**live, "type": "Slot"})
    checks = conformance.check_data(schedules, slots, now)
    webhooks = services.webhooks
    found = await services.store.find(
        c.SUBSCRIPTIONS, {"tenant": provider, "status": "active"}, sort=[("created", -1)]
    )
    http = [s for s in found if s["endpoint"] != subs.INBOX]
    if webhooks is None or not found:
        checks += conformance.skipped_webhook_checks(
            "no active rest-hook Subscription: create one (channel.endpoint your HTTPS URL) "
            "to have your endpoint checked"
        )
    elif not http:
        checks += conformance.skipped_webhook_checks(
            f"your subscription delivers to {subs.INBOX} (the gateway's own capture); point a "
            "Subscription at your HTTPS endpoint to have it checked"
        )
    else:
        sub = http[0]
        headers: dict[str, str] = {}
        for h in sub.get("headers") or []:
            name, _, value = h.partition(":")
            headers[name.strip()] = value.strip()
        bundle = subs.notification_bundle(
            sub,
            base=webhooks.base,
            kind="heartbeat",
            events_since=await webhooks.events_count(sub["_id"]),
            now=now,
        )
        checks += await conformance.probe_endpoint(
            webhooks.sender,
            url=sub["endpoint"],
            secrets=tuple(webhooks._secrets_in_force(sub, now)),
            body=orjson.dumps(bundle),
            headers=headers,
            timeout=services.settings.webhook_timeout_seconds,
            tenant=provider,
            subscription=sub["_id"],
        )
    return conformance.report(provider, now, checks)


def routes(app: web.Application) -> None:
    app.router.add_post("/sandbox/reset", reset)
    app.router.add_post("/sandbox/providers", create_provider)
    app.router.add_post("/sandbox/payers", create_payer)
    app.router.add_post("/sandbox/patients", create_patient)
    app.router.add_post("/sandbox/referrals", create_referral)
    app.router.add_post("/sandbox/screenings", create_screening)
    app.router.add_get("/sandbox/clock", get_clock)
    app.router.add_post("/sandbox/clock", set_clock)
    app.router.add_get("/sandbox/inbox/{provider_id}", get_inbox)
    app.router.add_delete("/sandbox/inbox/{provider_id}", clear_inbox)
    app.router.add_get("/sandbox/outbox", get_outbox)
    app.router.add_delete("/sandbox/outbox", clear_outbox)
    app.router.add_post("/sandbox/conformance/{provider_id}", run_conformance)
