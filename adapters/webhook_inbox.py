"""The embedded twin of webhook delivery: ``sandbox:inbox`` endpoints.

A delivery is signed exactly as over HTTP (same headers, same library) and
kept in the store for ``GET /sandbox/inbox/{provider_id}``, with the raw body
so a tester can check the signature the way their system would. It always
"answers" 200.
"""

from __future__ import annotations

import time
import uuid

import orjson

from adapters.webhook_http import CONTENT_TYPE, sign_headers
from gateway import constants as c
from gateway.ports import Clock, Store, WebhookRequest, WebhookResult
from gateway.timeutil import to_store

INBOX_URL = "sandbox:inbox"


class InboxWebhookSender:
    """``WebhookSender`` for ``sandbox:inbox``: stores what would have been POSTed."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def refusal(self, url: str) -> str | None:
        return None if url == INBOX_URL else f"only {INBOX_URL} is an inbox endpoint"

    async def send(self, request: WebhookRequest) -> WebhookResult:
        started = time.perf_counter()
        headers = {
            **request.headers,
            "Content-Type": CONTENT_TYPE,
            **sign_headers(request.msg_id, request.body, request.secrets),
        }
        await self._store.insert(
            c.SANDBOX_INBOX,
            {
                "_id": uuid.uuid4().hex,
                "tenant": request.tenant,
                "subscription": request.subscription,
                "at": to_store(self._clock.now()),
                "webhook_id": request.msg_id,
                "headers": headers,
                "body": orjson.loads(request.body),
                "raw_body": request.body.decode("utf-8"),
            },
        )
        ms = round((time.perf_counter() - started) * 1000, 2)
        return WebhookResult(200, ms, response_excerpt="stored in the sandbox inbox")
