"""Facilities (*placówki*, FHIR ``Location``): list, add, edit."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import FhirError
from gateway.http.ui import core, forms, i18n, plain, writes

FIELDS = {
    "Location.name": "name",
    "Location.status": "status",
    "Location.address.line": "line",
    "Location.address.city": "city",
    "Location.address.postalCode": "postal_code",
}
STATUSES = ("active", "suspended", "inactive")


def status_options(_: i18n.Translate) -> list[tuple[str, str]]:
    labels = {"active": _("Active"), "suspended": _("Suspended"), "inactive": _("Inactive")}
    return [(s, labels[s]) for s in STATUSES]


def form_of(resource: dict[str, Any]) -> forms.Form:
    addr = resource.get("address") or {}
    return forms.Form(
        values={
            "name": resource.get("name") or "",
            "status": resource.get("status") or "active",
            "line": ", ".join(addr.get("line") or []),
            "city": addr.get("city") or "",
            "postal_code": addr.get("postalCode") or "",
        }
    )


def apply_form(form: forms.Form, base: dict[str, Any], _: i18n.Translate) -> dict[str, Any]:
    """The Location with the form's fields over ``base`` (whatever else a vendor system
    put on it, e.g. identifiers or telecom, is kept)."""
    if not form.get("name"):
        form.error("name", _("Enter the facility's name."))
    elif len(form.get("name")) > 200:
        form.error("name", _("The name can be at most 200 characters long."))
    if form.get("status") not in STATUSES:
        form.error("status", _("Choose the status."))
    postal = form.get("postal_code")
    if postal and not (
        len(postal) == 6 and postal[2] == "-" and (postal[:2] + postal[3:]).isdigit()
    ):
        form.error("postal_code", _("Enter a postal code like 00-950."))
    resource = {**base, "resourceType": "Location", "name": form.get("name")}
    resource["status"] = form.get("status") or "active"
    address = dict(base.get("address") or {})
    for key, value in (
        ("line", [form.get("line")] if form.get("line") else None),
        ("city", form.get("city") or None),
        ("postalCode", postal or None),
    ):
        if value:
            address[key] = value
        else:
            address.pop(key, None)
    if address:
        resource["address"] = address
    else:
        resource.pop("address", None)
    return resource


async def list_page(request: web.Request) -> web.Response:
    me = await core.signed_in(request)
    docs = await writes.live(request, me["_id"], "Location")
    return await core.render(request, "facilities.html", {"facilities": docs})


async def new_page(request: web.Request) -> web.Response:
    await core.signed_in(request)
    form = forms.Form(values={"status": "active"})
    return await _render_form(request, form, None)


async def _render_form(
    request: web.Request, form: forms.Form, doc: dict[str, Any] | None, status: int = 200
) -> web.Response:
    _ = i18n.gettext(request)
    return await core.render(
        request,
        "facility_form.html",
        {"form": form, "doc": doc, "statuses": status_options(_)},
        status=status,
    )


async def create(request: web.Request) -> web.Response:
    me = await core.signed_in(request)
    _ = i18n.gettext(request)
    form = await forms.read_form(request)
    resource = apply_form(form, {}, _)
    if form.ok:
        try:
            result = await writes.create(request, me["_id"], "Location", resource)
        except FhirError as err:
            forms.fhir_error_to_form(form, err, FIELDS, plain.translator_for(_))
        else:
            await core.flash(request, _("The facility {name} was added.", name=form.get("name")))
            raise core.see_other(f"/ui/facilities/{result['id']}")
    return await _render_form(request, form, None, status=400)


async def edit_page(request: web.Request) -> web.Response:
    me = await core.signed_in(request)
    doc = await writes.current(request, me["_id"], "Location", request.match_info["id"])
    form = form_of(doc["resource"])
    form.values["version"] = str(doc["version"])
    return await _render_form(request, form, doc)


async def update(request: web.Request) -> web.Response:
    me = await core.signed_in(request)
    _ = i18n.gettext(request)
    rid = request.match_info["id"]
    doc = await writes.current(request, me["_id"], "Location", rid)
    form = await forms.read_form(request)
    resource = apply_form(form, writes.editable(doc["resource"]), _)
    version = int(form.get("version")) if form.get("version").isdigit() else None
    if form.ok:
        try:
            await writes.update(request, me["_id"], "Location", rid, resource, version)
        except FhirError as err:
            forms.fhir_error_to_form(form, err, FIELDS, plain.translator_for(_))
        else:
            await core.flash(request, _("Changes saved."))
            raise core.see_other(f"/ui/facilities/{rid}")
    return await _render_form(request, form, doc, status=400)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ui/facilities", list_page)
    r.add_get("/ui/facilities/new", new_page)
    r.add_post("/ui/facilities", create)
    r.add_get("/ui/facilities/{id}", edit_page)
    r.add_post("/ui/facilities/{id}", update)
