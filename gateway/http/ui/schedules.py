"""Schedules (*harmonogramy*, FHIR ``Schedule``) per scope, and their slots: one at a
time, or a weekly pattern with the category counts per day the facility chooses
(R-SCHED-3), previewed before it is published as transactions through the same path
as ``POST /fhir``."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway import slot_pattern
from gateway.errors import FhirError
from gateway.http.keys import SERVICES
from gateway.http.ui import core, forms, i18n, plain, writes
from gateway.timeutil import WARSAW, from_store, to_store, warsaw_day
from mappings import codes

# Identifiers of slots published from a weekly pattern: conditional creates on them make
# publishing the same pattern twice (a double click, a retry) change nothing.
PATTERN_SLOT_SYSTEM = "http://cer-gateway.org/fhir/sid/manual-entry-slot"
MAX_PATTERN_SLOTS = 5000
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NO_CATEGORY = "none"

# R-SCHED-3: the kinds of schedule per scope, offered as names (the facility may type
# any other). English text; the catalog translates.
KINDS: dict[str, tuple[str, ...]] = {
    "cardiology": ("Cardiology consultations",),
    "cytology": ("Gynaecological consultations", "Specimen collection (cytology)"),
    "mammography": ("Screening mammography", "Mammography under another contract"),
}

SCHEDULE_FIELDS = {
    "Schedule.actor": "location",
    "Schedule.serviceType": "scope",
    "Schedule.comment": "name",
}
SLOT_FIELDS = {
    "Slot.start": "start",
    "Slot.end": "length",
    "Slot.appointmentType": "category",
    "Slot.serviceType": "category",
}


def display(info: Any, lang: str) -> str:
    return str(info.display_pl if lang == "pl" else info.display_en)


def scope_options(lang: str) -> list[tuple[str, str]]:
    return [(code, display(info, lang)) for code, info in codes.scopes().items()]


def category_options(scope: str, lang: str) -> list[tuple[str, str]]:
    """The slot categories of a scope; ``none`` first where a category is optional."""
    _ = i18n.translator(lang)
    out = [(code, display(info, lang)) for code, info in codes.slot_categories().items()]
    if not codes.scopes()[scope].slot_category_required:
        out.insert(0, (NO_CATEGORY, _("No category")))
    return out


def schedule_scope(doc: dict[str, Any]) -> str:
    return str(doc["central"]["scopes"][0])


async def facilities(request: web.Request, tenant: str) -> list[tuple[str, str]]:
    docs = await writes.live(request, tenant, "Location")
    return [(d["rid"], d["resource"].get("name") or d["rid"]) for d in docs]


# --------------------------------------------------------------------------- schedules


async def list_page(request: web.Request, form: forms.Form | None = None) -> web.Response:
    me = await core.signed_in(request)
    lang = i18n.language(request)
    docs = await writes.live(request, me["_id"], "Schedule")
    places = await facilities(request, me["_id"])
    names = dict(places)
    scopes = codes.scopes()
    rows = [
        {
            "rid": d["rid"],
            "name": d["central"].get("comment") or "",
            "scopes": ", ".join(display(scopes[s], lang) for s in d["central"]["scopes"]),
            "facility": names.get(d["central"]["location_id"], d["central"]["location_id"]),
            "active": d["central"].get("active", True),
        }
        for d in docs
    ]
    _ = i18n.translator(lang)
    kinds = [_(k) for ks in KINDS.values() for k in ks]
    return await core.render(
        request,
        "schedules.html",
        {
            "schedules": rows,
            "facility_options": places,
            "scope_options": scope_options(lang),
            "kinds": kinds,
            "form": form or forms.Form(values={"scope": "cardiology"}),
        },
        status=400 if form is not None else 200,
    )


async def create(request: web.Request) -> web.Response:
    me = await core.signed_in(request)
    _ = i18n.gettext(request)
    form = await forms.read_form(request)
    places = dict(await facilities(request, me["_id"]))
    if form.get("location") not in places:
        form.error("location", _("Choose the facility."))
    if form.get("scope") not in codes.scopes():
        form.error("scope", _("Choose the scope."))
    if len(form.get("name")) > 200:
        form.error("name", _("The name can be at most 200 characters long."))
    if form.ok:
        resource: dict[str, Any] = {
            "resourceType": "Schedule",
            "active": True,
            "serviceType": [{"coding": [codes.coding(codes.SCOPE_SYSTEM, form.get("scope"))]}],
            "actor": [{"reference": f"Location/{form.get('location')}"}],
        }
        if form.get("name"):
            resource["comment"] = form.get("name")
        try:
            result = await writes.create(request, me["_id"], "Schedule", resource)
        except FhirError as err:
            forms.fhir_error_to_form(form, err, SCHEDULE_FIELDS, plain.translator_for(_))
        else:
            await core.flash(request, _("The schedule was added. Now add its slots."))
            raise core.see_other(f"/ui/schedules/{result['id']}")
    return await list_page(request, form)


# --------------------------------------------------------------------------- one schedule


def default_pattern(today: date, scope: str) -> forms.Form:
    """Next Monday, 6 weeks, Mondays 8:00-12:00, 20-minute slots, all of the scope's
    usual first-time category."""
    monday = today + timedelta(days=7 - today.weekday())
    values = {
        "first_day": monday.isoformat(),
        "weeks": "6",
        "day_start": "08:00",
        "day_end": "12:00",
        "minutes": "20",
        "wd0": "on",
    }
    main = "first-stable" if codes.scopes()[scope].slot_category_required else NO_CATEGORY
    values[f"count_{main}"] = "12"
    return forms.Form(values=values)


async def schedule_page(
    request: web.Request,
    *,
    slot_form: forms.Form | None = None,
    pattern_form: forms.Form | None = None,
    edit_form: forms.Form | None = None,
    preview: dict[str, Any] | None = None,
    status: int = 200,
) -> web.Response:
    me = await core.signed_in(request)
    lang = i18n.language(request)
    doc = await writes.current(request, me["_id"], "Schedule", request.match_info["id"])
    scope = schedule_scope(doc)
    services = request.app[SERVICES]
    today = warsaw_day(services.clock.now())
    places = dict(await facilities(request, me["_id"]))
    upcoming = await services.store.count(
        "resources",
        {
            "tenant": me["_id"],
            "type": "Slot",
            "deleted": False,
            "central.schedule_id": doc["rid"],
            "central.start": {"$gte": to_store(datetime.combine(today, time(0), WARSAW))},
        },
    )
    _ = i18n.translator(lang)
    return await core.render(
        request,
        "schedule.html",
        {
            "doc": doc,
            "scope": display(codes.scopes()[scope], lang),
            "facility": places.get(doc["central"]["location_id"], doc["central"]["location_id"]),
            "upcoming": upcoming,
            "categories": category_options(scope, lang),
            "weekdays": [(str(i), _(name)) for i, name in enumerate(WEEKDAYS)],
            "slot_form": slot_form
            or forms.Form(values={"date": today.isoformat(), "length": "20"}),
            "pattern_form": pattern_form or default_pattern(today, scope),
            "edit_form": edit_form
            or forms.Form(
                values={
                    "name": doc["central"].get("comment") or "",
                    "active": "on" if doc["central"].get("active", True) else "",
                    "version": str(doc["version"]),
                }
            ),
            "preview": preview,
            "week_url": "/ui/week?" + urlencode({"schedule": doc["rid"]}),
        },
        status=status,
    )


async def show(request: web.Request) -> web.Response:
    return await schedule_page(request)


async def edit(request: web.Request) -> web.Response:
    """The schedule's name and whether it is active: a ``PUT`` with ``If-Match``; its
    scope and facility stay (a schedule for another scope is another schedule)."""
    me = await core.signed_in(request)
    _ = i18n.gettext(request)
    doc = await writes.current(request, me["_id"], "Schedule", request.match_info["id"])
    form = await forms.read_form(request)
    if len(form.get("name")) > 200:
        form.error("name", _("The name can be at most 200 characters long."))
    version = int(form.get("version")) if form.get("version").isdigit() else None
    if form.ok:
        resource = writes.editable(doc["resource"])
        resource["active"] = form.get("active") == "on"
        if form.get("name"):
            resource["comment"] = form.get("name")
        else:
            resource.pop("comment", None)
        try:
            await writes.update(request, me["_id"], "Schedule", doc["rid"], resource, version)
        except FhirError as err:
            forms.fhir_error_to_form(form, err, SCHEDULE_FIELDS, plain.translator_for(_))
        else:
            await core.flash(request, _("Changes saved."))
            raise core.see_other(f"/ui/schedules/{doc['rid']}")
    return await schedule_page(request, edit_form=form, status=400)


def _slot_resource(
    schedule_id: str, scope: str, category: str | None, start: datetime, end: datetime
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Slot",
        "serviceType": [{"coding": [codes.coding(codes.SCOPE_SYSTEM, scope)]}],
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": "free",
        "start": start.isoformat(),
        "end": end.isoformat(),
    }
    if category:
        resource["appointmentType"] = {
            "coding": [codes.coding(codes.SLOT_CATEGORY_SYSTEM, category)]
        }
    return resource


def _read_date(form: forms.Form, name: str, _: i18n.Translate) -> date | None:
    try:
        return date.fromisoformat(form.get(name))
    except ValueError:
        form.error(name, _("Enter a date like 2027-01-11."))
        return None


def _read_time(form: forms.Form, name: str, _: i18n.Translate) -> time | None:
    try:
        value = time.fromisoformat(form.get(name))
    except ValueError:
        form.error(name, _("Enter a time like 08:00."))
        return None
    return value.replace(second=0, microsecond=0)


def _read_int(form: forms.Form, name: str, low: int, high: int, message: str) -> int | None:
    text = form.get(name)
    if not text.isdigit() or not low <= int(text) <= high:
        form.error(name, message)
        return None
    return int(text)


def _category(form: forms.Form, scope: str, _: i18n.Translate) -> str | None:
    value = form.get("category")
    allowed = {c for c, _label in category_options(scope, "en")}
    if value not in allowed:
        form.error("category", _("Choose the slot category."))
        return None
    return None if value == NO_CATEGORY else value


async def add_slot(request: web.Request) -> web.Response:
    """One slot: day, start time, length, category."""
    me = await core.signed_in(request)
    _ = i18n.gettext(request)
    doc = await writes.current(request, me["_id"], "Schedule", request.match_info["id"])
    scope = schedule_scope(doc)
    form = await forms.read_form(request)
    day = _read_date(form, "date", _)
    start = _read_time(form, "start", _)
    minutes = _read_int(
        form,
        "length",
        slot_pattern.MIN_MINUTES,
        slot_pattern.MAX_MINUTES,
        _("A slot lasts from 5 to 480 minutes."),
    )
    category = _category(form, scope, _)
    if form.ok and day and start and minutes:
        begin = datetime.combine(day, start, WARSAW)
        end = begin + timedelta(minutes=minutes)
        resource = _slot_resource(doc["rid"], scope, category, begin, end)
        try:
            await writes.create(request, me["_id"], "Slot", resource)
        except FhirError as err:
            forms.fhir_error_to_form(form, err, SLOT_FIELDS, plain.translator_for(_))
        else:
            await core.flash(
                request,
                _(
                    "The slot on {day} at {time} was published.",
                    day=day.isoformat(),
                    time=start.strftime("%H:%M"),
                ),
            )
            raise core.see_other(f"/ui/schedules/{doc['rid']}")
    return await schedule_page(request, slot_form=form, status=400)


def read_pattern(
    form: forms.Form, scope: str, today: date, _: i18n.Translate
) -> slot_pattern.WeeklyPattern | None:
    """The weekly pattern the form describes; errors go next to their fields."""
    first = _read_date(form, "first_day", _)
    if first is not None and first < today:
        form.error("first_day", _("The first day is in the past: choose today or later."))
    weeks = _read_int(
        form, "weeks", 1, slot_pattern.MAX_WEEKS, _("Enter a number of weeks from 1 to 52.")
    )
    weekdays = frozenset(i for i in range(7) if form.get(f"wd{i}") == "on")
    if not weekdays:
        form.error("weekdays", _("Choose at least one day of the week."))
    day_start = _read_time(form, "day_start", _)
    day_end = _read_time(form, "day_end", _)
    if day_start and day_end and day_end <= day_start:
        form.error("day_end", _("The end must be later than the start."))
    minutes = _read_int(
        form,
        "minutes",
        slot_pattern.MIN_MINUTES,
        slot_pattern.MAX_MINUTES,
        _("A slot lasts from 5 to 480 minutes."),
    )
    counts: list[tuple[str | None, int]] = []
    bad_count = False
    for code, _label in category_options(scope, "en"):
        text = form.get(f"count_{code}") or "0"
        if not text.isdigit():
            form.error(f"count_{code}", _("Enter a whole number, 0 or more."))
            bad_count = True
            continue
        counts.append((None if code == NO_CATEGORY else code, int(text)))
    if form.errors or first is None or weeks is None or not day_start or not day_end or not minutes:
        return None
    per_day = slot_pattern.slots_per_day(day_start, day_end, minutes)
    if per_day == 0:
        form.error("minutes", _("Not even one slot fits between the start and the end."))
        return None
    total = sum(n for _c, n in counts)
    if not bad_count and total != per_day:
        form.error(
            "counts",
            _(
                "The categories add up to {total} slots, but {per_day} slots fit in a day: "
                "make them add up to {per_day}.",
                total=total,
                per_day=per_day,
            ),
        )
        return None
    pattern = slot_pattern.WeeklyPattern(
        first_day=first,
        weeks=weeks,
        weekdays=weekdays,
        day_start=day_start,
        day_end=day_end,
        minutes=minutes,
        counts=tuple((c, n) for c, n in counts if n),
    )
    if per_day * len(pattern.days()) > MAX_PATTERN_SLOTS:
        form.error(
            "weeks",
            _("That is more than {max} slots at once: publish fewer weeks.", max=MAX_PATTERN_SLOTS),
        )
        return None
    return pattern


async def _plan(
    request: web.Request, tenant: str, schedule_id: str, pattern: slot_pattern.WeeklyPattern
) -> tuple[list[slot_pattern.PlannedSlot], int, int]:
    """``(new slots, existing skipped, DST-skipped)``: times that already have a slot
    in this schedule are left out."""
    expansion = slot_pattern.expand(pattern)
    if not expansion.slots:
        return [], 0, expansion.skipped
    existing = await writes.live(
        request,
        tenant,
        "Slot",
        {
            "central.schedule_id": schedule_id,
            "central.start": {
                "$gte": to_store(expansion.slots[0].start),
                "$lte": to_store(expansion.slots[-1].start),
            },
        },
        sort=[("central.start", 1)],
    )
    taken = {
        d["central"]["start"] for d in existing if d["central"]["status"] != "entered-in-error"
    }
    new = [s for s in expansion.slots if to_store(s.start) not in taken]
    return new, len(expansion.slots) - len(new), expansion.skipped


def _preview(
    planned: list[slot_pattern.PlannedSlot], existing: int, dst: int, scope: str, lang: str
) -> dict[str, Any]:
    per_category = Counter(s.category or NO_CATEGORY for s in planned)
    labels = dict(category_options(scope, lang))
    return {
        "total": len(planned),
        "days": len({s.start.date() for s in planned}),
        "existing": existing,
        "dst": dst,
        "per_category": [(labels.get(c, c), n) for c, n in per_category.items()],
        "first": planned[0].start if planned else None,
        "last": planned[-1].start if planned else None,
    }


async def pattern(request: web.Request) -> web.Response:
    """``action=preview``: count what would be published; ``action=publish``: publish it."""
    me = await core.signed_in(request)
    lang = i18n.language(request)
    _ = i18n.translator(lang)
    doc = await writes.current(request, me["_id"], "Schedule", request.match_info["id"])
    scope = schedule_scope(doc)
    form = await forms.read_form(request)
    today = warsaw_day(request.app[SERVICES].clock.now())
    weekly = read_pattern(form, scope, today, _)
    if weekly is None:
        return await schedule_page(request, pattern_form=form, status=400)
    planned, existing, dst = await _plan(request, me["_id"], doc["rid"], weekly)
    preview = _preview(planned, existing, dst, scope, lang)
    if form.get("action") != "publish" or not planned:
        return await schedule_page(request, pattern_form=form, preview=preview)
    entries = []
    for s in planned:
        resource = _slot_resource(doc["rid"], scope, s.category, s.start, s.end)
        value = f"{doc['rid']}/{to_store(s.start)}"
        resource["identifier"] = [{"system": PATTERN_SLOT_SYSTEM, "value": value}]
        entries.append(
            {
                "resource": resource,
                "request": {
                    "method": "POST",
                    "url": "Slot",
                    "ifNoneExist": urlencode({"identifier": f"{PATTERN_SLOT_SYSTEM}|{value}"}),
                },
            }
        )
    try:
        await writes.transaction(request, me["_id"], entries)
    except FhirError as err:
        forms.issues_to_fields(form, err.issues, {}, plain.translator_for(_))
        return await schedule_page(request, pattern_form=form, preview=preview, status=400)
    await core.flash(
        request,
        _(
            "{total} slots published, from {first} to {last}.",
            total=len(planned),
            first=planned[0].start.strftime("%Y-%m-%d"),
            last=planned[-1].start.strftime("%Y-%m-%d"),
        ),
    )
    raise core.see_other(
        "/ui/week?"
        + urlencode({"schedule": doc["rid"], "start": planned[0].start.date().isoformat()})
    )


def slot_time(stored: str) -> datetime:
    return from_store(stored).astimezone(WARSAW)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ui/schedules", list_page)
    r.add_post("/ui/schedules", create)
    r.add_get("/ui/schedules/{id}", show)
    r.add_post("/ui/schedules/{id}", edit)
    r.add_post("/ui/schedules/{id}/slots", add_slot)
    r.add_post("/ui/schedules/{id}/pattern", pattern)
