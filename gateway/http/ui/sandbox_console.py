"""The sandbox console at ``/ui/sandbox`` (issue 10; sandbox mode only, like ``/sandbox/*``).

For integration testers: the sandbox clock (set, advance), test providers
(create, sign in as one into the manual entry pages), test patients with
referrals and screening history, each provider's webhook deliveries (headers,
body, signature check, tries; the failing ones on the front page with their
reason), the notification outbox, reset with a confirmation step, and the
conformance report.

Every action calls what the ``/sandbox/*`` endpoints call
(``gateway.http.sandbox``) and reads through ``gateway.sandbox_console``; this
module only parses forms, puts errors next to their fields and renders.
Pages need no sign-in: in sandbox mode the data are test data, and a tester
works across providers.
"""

from __future__ import annotations

import random
import secrets
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import aiohttp_jinja2
from aiohttp import web

from gateway import constants as c
from gateway import sandbox_console as reads
from gateway.bootstrap import Services, save_clock
from gateway.errors import FhirError
from gateway.http import sandbox as actions
from gateway.http.keys import SERVICES
from gateway.http.ui import core, forms, i18n, session
from mappings import codes

PREFIX = "/ui/sandbox"
WARSAW = ZoneInfo("Europe/Warsaw")
ADVANCE_BUTTONS = (("PT1H", "+1 hour"), ("P1D", "+1 day"), ("P7D", "+7 days"))
REFERRAL_STATUSES = ("issued", "realized", "cancelled", "expired")


def routes(app: web.Application) -> None:
    env = aiohttp_jinja2.get_env(app)
    env.filters["console_time"] = console_time
    env.filters["delivery_url"] = delivery_url
    env.globals["console_time"] = console_time
    r = app.router
    r.add_get(PREFIX, front)
    r.add_post(f"{PREFIX}/clock", move_clock)
    r.add_post(f"{PREFIX}/providers", create_provider)
    r.add_get(PREFIX + "/providers/{provider_id}", provider_page)
    r.add_post(PREFIX + "/providers/{provider_id}/signin", sign_in_as)
    r.add_get(PREFIX + "/providers/{provider_id}/inbox", inbox)
    r.add_post(PREFIX + "/providers/{provider_id}/inbox/clear", clear_inbox)
    r.add_get(PREFIX + "/providers/{provider_id}/deliveries/{key}", delivery)
    r.add_get(PREFIX + "/providers/{provider_id}/conformance", conformance_page)
    r.add_post(PREFIX + "/providers/{provider_id}/conformance", run_conformance)
    r.add_get(f"{PREFIX}/patients", patients_page)
    r.add_post(f"{PREFIX}/patients", create_patient)
    r.add_post(f"{PREFIX}/referrals", create_referral)
    r.add_post(f"{PREFIX}/screenings", create_screening)
    r.add_get(f"{PREFIX}/outbox", outbox)
    r.add_post(f"{PREFIX}/outbox/clear", clear_outbox)
    r.add_get(f"{PREFIX}/reset", reset_page)
    r.add_post(f"{PREFIX}/reset", reset)


# --------------------------------------------------------------------------- helpers


def console_time(value: str | None, seconds: bool = True) -> str:
    """A stored instant (UTC) as Warsaw wall-clock time, ``dd.mm.yyyy hh:mm[:ss]``."""
    if not value:
        return ""
    try:
        local = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(WARSAW)
    except ValueError:
        return value
    return local.strftime("%d.%m.%Y %H:%M:%S" if seconds else "%d.%m.%Y %H:%M")


def delivery_url(d: reads.Delivery) -> str:
    return f"{PREFIX}/providers/{quote(d.tenant, safe='')}/deliveries/{quote(d.key, safe=':')}"


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def _provider(request: web.Request) -> dict[str, Any]:
    doc = await _services(request).store.get(c.PROVIDERS, request.match_info["provider_id"])
    if doc is None:
        raise web.HTTPNotFound()
    return doc


def _now_text(services: Services) -> str:
    return services.clock.now().astimezone(WARSAW).strftime("%d.%m.%Y %H:%M:%S")


async def _render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    services = _services(request)
    base = {
        "console_now": _now_text(services),
        "console_section": context.pop("section", ""),
    }
    return await core.render(request, template, {**base, **context}, status=status)


def _scope_name(lang: str, code: str) -> str:
    info = codes.scopes().get(code)
    if info is None:
        return code
    return info.display_pl if lang == "pl" else info.display_en


def _scope_options(lang: str, which: str) -> list[tuple[str, str]]:
    out = []
    for code, info in codes.scopes().items():
        if which == "referral" and not info.referral_required_first_time:
            continue
        if which == "screening" and info.screening is None:
            continue
        out.append((code, info.display_pl if lang == "pl" else info.display_en))
    return out


# --------------------------------------------------------------------------- front page


async def front(request: web.Request, clock_form: forms.Form | None = None) -> web.Response:
    """The front page: clock, failing deliveries (with why), providers, the other pages."""
    context = await _front_context(request, clock_form or forms.Form(), forms.Form())
    status = 400 if clock_form is not None and clock_form.errors else 200
    return await _render(request, "sandbox/front.html", context, status=status)


async def _front_context(
    request: web.Request, clock_form: forms.Form, provider_form: forms.Form
) -> dict[str, Any]:
    services = _services(request)
    store = services.store
    providers = await reads.providers(store)
    return {
        "section": "front",
        "clock_form": clock_form,
        "offset": actions.sandbox_clock(services).offset,
        "advance_buttons": ADVANCE_BUTTONS,
        "failing": await reads.failing_deliveries(store),
        "failing_subscriptions": await reads.failing_subscriptions(store),
        "providers": providers,
        "provider_names": {p.id: p.name for p in providers},
        "provider_form": provider_form,
    }


def _parse_when(text: str) -> dict[str, str]:
    """A duration advances (``P1D``); an instant sets (a bare local time is Warsaw time)."""
    if text[:1] in ("P", "p"):
        return {"advance": text.upper()}
    instant = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=WARSAW)
    return {"set": instant.isoformat()}


async def move_clock(request: web.Request) -> web.Response:
    """``POST /ui/sandbox/clock``: ``advance`` (a button's duration), ``real`` (back to real
    time) or ``when`` (a duration to advance by, or an instant to set)."""
    _ = i18n.gettext(request)
    services = _services(request)
    form = await forms.read_form(request)
    if form.get("real"):
        actions.sandbox_clock(services).set_offset(timedelta(0))
        await save_clock(services)
        await core.flash(
            request, _("The clock follows real time again: {now}", now=_now_text(services))
        )
        raise core.see_other(PREFIX)
    button = form.get("advance")
    if button:
        if button not in {d for d, _label in ADVANCE_BUTTONS}:
            raise web.HTTPBadRequest()
        data = {"advance": button}
    else:
        when = form.get("when")
        if not when:
            form.error("when", _("Write a duration such as P1D or PT2H30M, or a date and time."))
            return await front(request, form)
        try:
            data = _parse_when(when)
        except ValueError:
            form.error(
                "when",
                _(
                    "This is neither a duration (P1D, PT2H30M) nor a date and time "
                    "(2027-01-11T08:00)."
                ),
            )
            return await front(request, form)
    try:
        await actions.move_clock(services, data)
    except FhirError as err:
        message = err.issues[0].diagnostics if err.issues else ""
        if "only advances" in message:
            message = _("An advance cannot go back in time; set a date and time instead.")
        form.error("when", message)
        return await front(request, form)
    await core.flash(request, _("The sandbox clock now shows {now}.", now=_now_text(services)))
    raise core.see_other(PREFIX)


# --------------------------------------------------------------------------- providers


async def create_provider(request: web.Request) -> web.Response:
    _ = i18n.gettext(request)
    form = await forms.read_form(request)
    name = form.get("name") or None
    if name is not None and len(name) > 200:
        form.error("name", _("A name has at most 200 characters."))
        context = await _front_context(request, forms.Form(), form)
        return await _render(request, "sandbox/front.html", context, status=400)
    created = await actions.make_provider(_services(request), name)
    return await _render(
        request,
        "sandbox/provider_created.html",
        {"section": "front", "created": created},
        status=201,
    )


async def provider_page(request: web.Request) -> web.Response:
    provider = await _provider(request)
    store = _services(request).store
    tenant = provider["_id"]
    counts = {
        rtype: await store.count(c.RESOURCES, {"tenant": tenant, "type": rtype, "deleted": False})
        for rtype in ("Location", "Schedule", "Slot", "Appointment")
    }
    subscriptions = await store.find(c.SUBSCRIPTIONS, {"tenant": tenant}, sort=[("created", 1)])
    return await _render(
        request,
        "sandbox/provider.html",
        {
            "section": "front",
            "p": provider,
            "counts": counts,
            "subscriptions": subscriptions,
        },
    )


async def sign_in_as(request: web.Request) -> web.Response:
    """Open a manual-entry session as this test provider (no credentials: sandbox only)."""
    provider = await _provider(request)
    await session.sign_in(request, provider["_id"])
    _ = i18n.gettext(request)
    await core.flash(
        request, _("Signed in as {name}.", name=provider.get("name") or provider["_id"])
    )
    raise core.see_other("/ui/")


# --------------------------------------------------------------------------- deliveries


async def inbox(request: web.Request) -> web.Response:
    provider = await _provider(request)
    store = _services(request).store
    only_failing = request.query.get("show") == "failing"
    page_no = int(request.query["page"]) if request.query.get("page", "").isdigit() else 1
    page_no = max(page_no, 1)
    size = reads.LIST_LIMIT
    if only_failing:
        found = await reads.failing_deliveries(store, tenant=provider["_id"], limit=size)
        found += await reads.refused_handshakes(store, provider["_id"], limit=size)
        found.sort(key=lambda d: (d.at, d.number or 0), reverse=True)
        more = False
    else:
        found = await reads.provider_deliveries(
            store, provider["_id"], limit=size + 1, skip=(page_no - 1) * size
        )
        more = len(found) > size
        found = found[:size]
    return await _render(
        request,
        "sandbox/inbox.html",
        {
            "section": "front",
            "p": provider,
            "deliveries": found,
            "only_failing": only_failing,
            "page_no": page_no,
            "more": more,
        },
    )


async def clear_inbox(request: web.Request) -> web.Response:
    provider = await _provider(request)
    removed = await actions.forget_inbox(_services(request), provider["_id"])
    _ = i18n.gettext(request)
    await core.flash(request, _("{n} kept request(s) removed from the inbox.", n=removed))
    raise core.see_other(f"{PREFIX}/providers/{quote(provider['_id'], safe='')}/inbox")


async def delivery(request: web.Request) -> web.Response:
    provider = await _provider(request)
    services = _services(request)
    base = services.webhooks.base if services.webhooks is not None else ""
    found = await reads.delivery(
        services.store, provider["_id"], request.match_info["key"], base=base
    )
    if found is None:
        raise web.HTTPNotFound()
    return await _render(
        request, "sandbox/delivery.html", {"section": "front", "p": provider, "d": found}
    )


# --------------------------------------------------------------------------- conformance


async def conformance_page(request: web.Request) -> web.Response:
    provider = await _provider(request)
    return await _render(
        request,
        "sandbox/conformance.html",
        {"section": "front", "p": provider, "report": None},
    )


async def run_conformance(request: web.Request) -> web.Response:
    provider = await _provider(request)
    report = await actions.conformance_report(_services(request), provider["_id"])
    return await _render(
        request,
        "sandbox/conformance.html",
        {"section": "front", "p": provider, "report": report},
    )


# --------------------------------------------------------------------------- patients


async def _patients_context(request: web.Request) -> dict[str, Any]:
    store = _services(request).store
    lang = i18n.language(request)
    _ = i18n.gettext(request)
    recent = await store.find(c.PATIENTS, {"sandbox": True}, limit=500)
    recent = sorted(recent, key=lambda p: str(p.get("created") or ""), reverse=True)[:30]
    pesels = [p["_id"] for p in recent]
    referrals = await store.find(c.REFERRALS, {"pesel": {"$in": pesels}}) if pesels else []
    screenings = await store.find(c.SCREENINGS, {"pesel": {"$in": pesels}}) if pesels else []
    by_patient: dict[str, dict[str, list[dict[str, Any]]]] = {
        p: {"referrals": [], "screenings": []} for p in pesels
    }
    for r in referrals:
        by_patient[r["pesel"]]["referrals"].append(r)
    for s in screenings:
        if s.get("status") == "done":
            by_patient[s["pesel"]]["screenings"].append(s)
    return {
        "section": "patients",
        "patients": recent,
        "history": by_patient,
        "referral_scopes": _scope_options(lang, "referral"),
        "screening_scopes": _scope_options(lang, "screening"),
        "referral_status_options": [(st, _(st)) for st in REFERRAL_STATUSES],
        "scope_name": lambda code: _scope_name(lang, code),
        "patient_form": forms.Form(),
        "referral_form": forms.Form(),
        "screening_form": forms.Form(),
        "created": None,
    }


async def patients_page(request: web.Request) -> web.Response:
    context = await _patients_context(request)
    pesel = request.query.get("pesel")
    if pesel:
        context["referral_form"] = forms.Form(values={"ref_pesel": pesel})
        context["screening_form"] = forms.Form(values={"scr_pesel": pesel})
    return await _render(request, "sandbox/patients.html", context)


async def _patients_answer(
    request: web.Request, form_name: str, form: forms.Form, created: dict[str, Any] | None
) -> web.Response:
    context = await _patients_context(request)
    context[form_name] = form
    context["created"] = created
    who = (created or {}).get("pesel") or (created or {}).get("for")
    if who:
        # the next form of the same patient starts with its PESEL
        if "ref_pesel" not in context["referral_form"].values:
            context["referral_form"] = forms.Form(values={"ref_pesel": who})
        if "scr_pesel" not in context["screening_form"].values:
            context["screening_form"] = forms.Form(values={"scr_pesel": who})
    status = 400 if form.errors else 201
    return await _render(request, "sandbox/patients.html", context, status=status)


def _birth_date_of_age(today: date, age: int) -> date:
    """A birth date ``age`` full years before ``today`` (a random day within that year)."""
    latest = (
        today.replace(year=today.year - age)
        if not (today.month == 2 and today.day == 29)
        else date(today.year - age, 2, 28)
    )
    rng = random.Random(secrets.randbits(64))
    return latest - timedelta(days=rng.randint(0, 364))


async def create_patient(request: web.Request) -> web.Response:
    """A synthetic patient: a valid PESEL of the birth date (or age) and sex asked for."""
    _ = i18n.gettext(request)
    services = _services(request)
    form = await forms.read_form(request)
    data: dict[str, Any] = {}
    sex = form.get("sex")
    if sex not in ("", "female", "male"):
        form.error("sex", _("Choose female, male or either."))
    elif sex:
        data["sex"] = sex
    born, age = form.get("birth_date"), form.get("age")
    if born and age:
        form.error("age", _("Give a birth date or an age, not both."))
    elif born:
        try:
            date.fromisoformat(born)
        except ValueError:
            form.error("birth_date", _("Write the date as YYYY-MM-DD, e.g. 1968-03-05."))
        data["birth_date"] = born
    elif age:
        if not age.isdigit() or not 0 <= int(age) <= 120:
            form.error("age", _("The age is a whole number of years from 0 to 120."))
        else:
            today = services.clock.now().astimezone(WARSAW).date()
            data["birth_date"] = _birth_date_of_age(today, int(age)).isoformat()
    if form.errors:
        return await _patients_answer(request, "patient_form", form, None)
    try:
        created = await actions.make_patient(services, data)
    except FhirError as err:
        forms.fhir_error_to_form(form, err, {"birth_date": "birth_date", "sex": "sex"})
        return await _patients_answer(request, "patient_form", form, None)
    return await _patients_answer(
        request, "patient_form", forms.Form(), {"kind": "patient", **created}
    )


async def create_referral(request: web.Request) -> web.Response:
    """An e-referral (R-PAT-2) for a patient: key and 4-digit code."""
    _ = i18n.gettext(request)
    form = await forms.read_form(request)
    data: dict[str, Any] = {
        "pesel": form.get("ref_pesel"),
        "scope": form.get("ref_scope"),
        "category": form.get("ref_category") or "stable",
        "privileged": form.get("ref_privileged") == "on",
        "status": form.get("ref_status") or "issued",
    }
    if not data["pesel"]:
        form.error("ref_pesel", _("Give the patient's PESEL (create a patient above)."))
        return await _patients_answer(request, "referral_form", form, None)
    try:
        created = await actions.make_referral(_services(request), data)
    except FhirError as err:
        forms.fhir_error_to_form(
            form,
            err,
            {k: f"ref_{k}" for k in ("pesel", "scope", "category", "privileged", "status")},
            _plain_issue(request),
        )
        return await _patients_answer(request, "referral_form", form, None)
    return await _patients_answer(
        request,
        "referral_form",
        forms.Form(),
        {"kind": "referral", "for": data["pesel"], **created},
    )


async def create_screening(request: web.Request) -> web.Response:
    """A screening exam done on a day (R-PAT-3: the history SIMP judges eligibility from)."""
    _ = i18n.gettext(request)
    form = await forms.read_form(request)
    data: dict[str, Any] = {
        "pesel": form.get("scr_pesel"),
        "scope": form.get("scr_scope"),
        "date": form.get("scr_date"),
        "hpv": form.get("scr_hpv") == "on",
    }
    if not data["pesel"]:
        form.error("scr_pesel", _("Give the patient's PESEL (create a patient above)."))
        return await _patients_answer(request, "screening_form", form, None)
    try:
        created = await actions.make_screening(_services(request), data)
    except FhirError as err:
        forms.fhir_error_to_form(
            form,
            err,
            {k: f"scr_{k}" for k in ("pesel", "scope", "date", "hpv")},
            _plain_issue(request),
        )
        return await _patients_answer(request, "screening_form", form, None)
    return await _patients_answer(
        request,
        "screening_form",
        forms.Form(),
        {"kind": "screening", "for": data["pesel"], **created},
    )


def _plain_issue(request: web.Request) -> Any:
    """The service's messages in the page's language where they are known."""
    _ = i18n.gettext(request)

    def translate(issue: Any) -> str:
        text = str(issue.diagnostics)
        if "checksum" in text or "PESEL" in text or "digits" in text:
            return (
                _("This is not a valid PESEL (11 digits with a correct check digit).")
                + f" ({text})"
            )
        if "date must be YYYY-MM-DD" in text:
            return _("Write the date as YYYY-MM-DD, e.g. 1968-03-05.")
        if "needs no e-referral" in text:
            return _("This scope needs no e-referral.")
        if "not a screening programme" in text:
            return _("This scope is not a screening programme.")
        if "HPV" in text:
            return _("An HPV test is a cytology screening.")
        return text

    return translate


# --------------------------------------------------------------------------- outbox


def _outbox_query(request: web.Request) -> dict[str, str]:
    return {k: request.query[k] for k in ("pesel", "channel", "kind") if request.query.get(k)}


async def outbox(request: web.Request) -> web.Response:
    query = _outbox_query(request)
    messages = await actions.outbox_messages(
        _services(request), actions.outbox_filter(query), newest_first=True
    )
    return await _render(
        request,
        "sandbox/outbox.html",
        {
            "section": "outbox",
            "messages": messages,
            "filters": forms.Form(values=dict(query)),
            "query": urlencode(query),
        },
    )


async def clear_outbox(request: web.Request) -> web.Response:
    form = await forms.read_form(request)
    query = {k: form.get(k) for k in ("pesel", "channel", "kind") if form.get(k)}
    removed = await actions.forget_outbox(_services(request), actions.outbox_filter(query))
    _ = i18n.gettext(request)
    await core.flash(request, _("{n} message(s) removed from the outbox.", n=removed))
    raise core.see_other(f"{PREFIX}/outbox" + (f"?{urlencode(query)}" if query else ""))


# --------------------------------------------------------------------------- reset


async def _reset_context(request: web.Request, form: forms.Form) -> dict[str, Any]:
    rows = await reads.providers(_services(request).store)
    return {
        "section": "reset",
        "form": form,
        "provider_options": [(p.id, f"{p.name} ({p.id})") for p in rows],
    }


async def reset_page(request: web.Request) -> web.Response:
    values = {"what": "provider" if request.query.get("provider_id") else "everything"}
    if request.query.get("provider_id"):
        values["provider_id"] = request.query["provider_id"]
    return await _render(
        request, "sandbox/reset.html", await _reset_context(request, forms.Form(values=values))
    )


async def reset(request: web.Request) -> web.Response:
    """Delete one provider's data or everything, once the tester confirmed it."""
    _ = i18n.gettext(request)
    services = _services(request)
    form = await forms.read_form(request)
    what = form.get("what")
    provider_id: str | None = None
    if what == "provider":
        provider_id = form.get("provider_id")
        if not provider_id or await services.store.get(c.PROVIDERS, provider_id) is None:
            form.error("provider_id", _("Choose the provider whose data to delete."))
    elif what != "everything":
        form.error("what", _("Choose what to delete."))
    if form.get("confirm") != "on":
        form.error("confirm", _("Tick the box to confirm: this cannot be undone."))
    if form.errors:
        return await _render(
            request, "sandbox/reset.html", await _reset_context(request, form), status=400
        )
    result = await actions.reset_data(services, provider_id)
    removed = sum(result["removed"].values())
    if provider_id is None:
        await core.flash(
            request,
            _("Everything was deleted ({n} records); the clock follows real time.", n=removed),
        )
    else:
        await core.flash(
            request,
            _("Provider {id} and its data were deleted ({n} records).", id=provider_id, n=removed),
        )
    raise core.see_other(PREFIX)
