"""Inbound patient channels: ``POST /channels/sms/inbound`` ``{from, text}`` (R-NOT-2).

The SMS gateway forwards a patient's reply here, as JSON or as a form
(``from`` and ``text`` fields). When ``SMS_INBOUND_TOKEN`` is set the request
must carry ``Authorization: Bearer <token>``. The answer is
``{"result": <code>, "reply": <text sent back>, "appointment_id"?: ...}``;
codes: ``cancelled``, ``cancel-queued``, ``already-cancelled``, ``choose``,
``not-found``, ``help``, ``cancel-failed``, ``left-waiting-room`` (with
``entries``), ``not-in-waiting-room``.
The grammar is in ``gateway.sms_replies``. Errors are problem+json. Neither
the number nor the text is logged.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from gateway import sms_replies
from gateway.errors import FhirError, Issue
from gateway.http.keys import CORRELATION_ID, SERVICES
from gateway.http.responses import json_response
from gateway.notifications import normalize_phone
from mappings.validation import parse_json

MAX_TEXT = 1600  # ten concatenated SMS segments


async def _form_or_json(request: web.Request) -> dict[str, Any]:
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    body = await request.read()
    data = parse_json(body) if body else None
    if not isinstance(data, dict):
        raise FhirError(
            400, [Issue("structure", "send a JSON object {from, text}")], code="invalid"
        )
    return data


async def sms_inbound(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    token = services.settings.sms_inbound_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise FhirError(
                401, [Issue("login", "a valid SMS gateway token is required")], code="unauthorized"
            )
    data = await _form_or_json(request)
    sender, text = data.get("from"), data.get("text")
    if not isinstance(sender, str) or not isinstance(text, str):
        raise FhirError(
            400, [Issue("required", "from and text are required strings")], code="invalid"
        )
    if len(text) > MAX_TEXT:
        raise FhirError(400, [Issue("too-long", "the text is too long")], code="invalid")
    phone = normalize_phone(sender)
    if phone is None:
        raise FhirError(422, [Issue("value", "from is not a phone number")], code="invalid-phone")
    outcome = await sms_replies.handle_inbound(services, phone, text, request[CORRELATION_ID])
    return json_response(outcome.to_json())


def routes(app: web.Application) -> None:
    app.router.add_post("/channels/sms/inbound", sms_inbound)
