"""The day view and the week view: a provider's slots, free / booked / cancelled, and
who booked each through which channel.

Personal data: a row shows only the last four digits of the patient's PESEL (enough
to tell two bookings apart at a glance); the visit's own page shows the rest to the
signed-in provider, who needs it. Nothing personal is logged.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.http.keys import SERVICES
from gateway.http.ui import core, i18n, writes
from gateway.timeutil import WARSAW, from_store, to_store, warsaw_day
from mappings import codes

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def masked_pesel(pesel: str | None) -> str:
    return f"•••••••{pesel[-4:]}" if pesel else ""


def cancel_channel(code: str | None, labels: dict[str, dict[str, str]], _: i18n.Translate) -> str:
    """Where a cancellation came from: the patient's channel by name (IKP, SMS, the
    waiting room), or "the facility" for the provider's own system and these pages
    (both send the same command, so they are not told apart)."""
    if not code:
        return ""
    info = codes.channels().get(code)
    if info is not None and info.group == "central":
        return labels["channel"].get(code, code)
    return _("the facility")


def day_bounds(first: date, days: int) -> tuple[str, str]:
    """Store instants of Warsaw midnight of ``first`` and ``days`` later (DST-proof)."""
    start = datetime.combine(first, time(0), WARSAW)
    end = datetime.combine(first + timedelta(days=days), time(0), WARSAW)
    return to_store(start), to_store(end)


def labels_for(lang: str) -> dict[str, dict[str, str]]:
    def disp(info: Any) -> str:
        return str(info.display_pl if lang == "pl" else info.display_en)

    return {
        "category": {k: disp(v) for k, v in codes.slot_categories().items()},
        "channel": {k: disp(v) for k, v in codes.channels().items()},
        "reason": {k: disp(v) for k, v in codes.cancellation_reasons().items()},
        "scope": {k: disp(v) for k, v in codes.scopes().items()},
    }


async def rows(
    request: web.Request,
    tenant: str,
    first: date,
    days: int,
    schedule: str | None,
    schedule_names: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per day: its slots in time order, each with the visit holding it and the visits
    cancelled on it. Two range reads on the (tenant, type, central.start) index."""
    lang = i18n.language(request)
    _ = i18n.translator(lang)
    labels = labels_for(lang)
    lo, hi = day_bounds(first, days)
    extra: dict[str, Any] = {"central.start": {"$gte": lo, "$lt": hi}}
    if schedule:
        extra["central.schedule_id"] = schedule
    fields = ["rid", "version", "central"]
    slots = await writes.live(
        request, tenant, "Slot", extra, sort=[("central.start", 1)], fields=fields
    )
    visits = await writes.live(
        request,
        tenant,
        "Appointment",
        {"central.start": {"$gte": lo, "$lt": hi}},
        sort=[("central.start", 1)],
        fields=fields,
    )
    by_slot: dict[str, list[dict[str, Any]]] = {}
    for v in visits:
        for sid in v["central"].get("slot_ids") or []:
            by_slot.setdefault(sid, []).append(v)
    out: dict[date, list[dict[str, Any]]] = {first + timedelta(days=i): [] for i in range(days)}
    status_text = {
        "free": _("free"),
        "booked": _("booked"),
        "held": _("held by the waiting room"),
        "unavailable": _("not available"),
    }
    for s in slots:
        central = s["central"]
        start = from_store(central["start"]).astimezone(WARSAW)
        holder = None
        cancelled = []
        for v in by_slot.get(s["rid"], []):
            vc = v["central"]
            if vc["status"] == "cancelled":
                cancelled.append(
                    {
                        "rid": v["rid"],
                        "patient": masked_pesel(vc.get("patient_pesel")),
                        "reason": labels["reason"].get(vc.get("cancel_reason") or "", ""),
                        "channel": cancel_channel(vc.get("cancel_channel"), labels, _),
                    }
                )
            elif vc["status"] not in ("waitlist", "proposed", "entered-in-error"):
                holder = v
        if central["status"] == "free":
            state = "free"
        elif holder is not None:
            state = "booked"
        elif central["status"] == "busy-tentative":
            state = "held"
        else:
            state = "unavailable"
        end = start + (from_store(central["end"]) - from_store(central["start"]))
        hhmm = f"{start.hour:02d}:{start.minute:02d}"
        category = central.get("category")
        row: dict[str, Any] = {
            "rid": s["rid"],
            "version": s["version"],
            "hours": f"{hhmm}\N{EN DASH}{end.hour:02d}:{end.minute:02d}",
            "when": f"{start.date().isoformat()} {hhmm}",
            "label": labels["category"][category]
            if category in labels["category"]
            else labels["scope"].get(central["scope"], central["scope"]),
            "schedule": (schedule_names or {}).get(central["schedule_id"], ""),
            "state": state,
            "state_text": status_text[state],
            "cancelled": cancelled,
            "visit": None,
        }
        if holder is not None:
            hc = holder["central"]
            row["visit"] = {
                "rid": holder["rid"],
                "patient": masked_pesel(hc.get("patient_pesel")),
                "channel": labels["channel"].get(hc.get("channel") or "", hc.get("channel")),
            }
        out.setdefault(start.date(), []).append(row)
    return [{"date": d, "weekday": _(WEEKDAYS[d.weekday()]), "slots": out[d]} for d in sorted(out)]


def _parse_day(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


async def _page(request: web.Request, *, week: bool) -> web.Response:
    me = await core.signed_in(request)
    today = warsaw_day(request.app[SERVICES].clock.now())
    chosen = _parse_day(request.query.get("start") or request.query.get("date"), today)
    first = chosen - timedelta(days=chosen.weekday()) if week else chosen
    days = 7 if week else 1
    schedule = request.query.get("schedule") or None
    schedules = await writes.live(request, me["_id"], "Schedule")
    if schedule and schedule not in {d["rid"] for d in schedules}:
        schedule = None
    lang = i18n.language(request)
    scope_labels = labels_for(lang)["scope"]
    names = {
        d["rid"]: d["central"].get("comment")
        or ", ".join(scope_labels.get(s, s) for s in d["central"]["scopes"])
        for d in schedules
    }
    # With one schedule shown, a column naming it would only repeat itself.
    several = schedule is None and len(schedules) > 1
    data = await rows(request, me["_id"], first, days, schedule, names if several else None)
    path = "/ui/week" if week else "/ui/day"
    key = "start" if week else "date"

    def link(day: date, target: str = path, k: str = key) -> str:
        q = {k: day.isoformat()}
        if schedule:
            q["schedule"] = schedule
        return f"{target}?{urlencode(q)}"

    counts = {
        state: sum(1 for d in data for r in d["slots"] if r["state"] == state)
        for state in ("free", "booked", "held", "unavailable")
    }
    total = sum(counts.values())
    counts["cancelled"] = sum(len(r["cancelled"]) for d in data for r in d["slots"])
    return await core.render(
        request,
        "calendar.html",
        {
            "week": week,
            "days": data,
            "first": first,
            "last": first + timedelta(days=days - 1),
            "counts": counts,
            "total": total,
            "schedule": schedule,
            "schedule_options": [("", "—"), *names.items()],
            "several": several,
            "prev_day": link(first - timedelta(days=1)),
            "next_day": link(first + timedelta(days=1)),
            "prev_week": link(first - timedelta(days=7)),
            "next_week": link(first + timedelta(days=7)),
            "today_link": link(today),
            "day_link": lambda d: link(d, "/ui/day", "date"),
            "week_link": link(first, "/ui/week", "start"),
            "here": request.path_qs,
        },
    )


async def day_page(request: web.Request) -> web.Response:
    return await _page(request, week=False)


async def week_page(request: web.Request) -> web.Response:
    return await _page(request, week=True)


def routes(app: web.Application) -> None:
    app.router.add_get("/ui/day", day_page)
    app.router.add_get("/ui/week", week_page)
