"""The webhook sender the gateway uses: HTTP(S) endpoints, and ``sandbox:inbox`` in sandbox mode."""

from __future__ import annotations

from gateway.ports import WebhookRequest, WebhookResult, WebhookSender

INBOX_URL = "sandbox:inbox"


class WebhookRouter:
    """``WebhookSender`` that hands each request to the sender of its endpoint's kind."""

    def __init__(self, http: WebhookSender, inbox: WebhookSender | None = None) -> None:
        self._http = http
        self._inbox = inbox

    async def start(self) -> None:
        await self._http.start()
        if self._inbox is not None:
            await self._inbox.start()

    async def close(self) -> None:
        await self._http.close()
        if self._inbox is not None:
            await self._inbox.close()

    async def refusal(self, url: str) -> str | None:
        if url == INBOX_URL:
            if self._inbox is None:
                return f"{INBOX_URL} endpoints exist only in sandbox mode"
            return None
        return await self._http.refusal(url)

    async def send(self, request: WebhookRequest) -> WebhookResult:
        if request.url == INBOX_URL:
            if self._inbox is None:
                return WebhookResult(None, 0.0, f"{INBOX_URL} endpoints exist only in sandbox mode")
            return await self._inbox.send(request)
        return await self._http.send(request)
