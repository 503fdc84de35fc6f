"""SMS and push through configurable HTTP services (aiohttp client).

The contract we speak (document it to whoever runs the service):

- SMS gateway: ``POST <SMS_GATEWAY_URL>`` with JSON
  ``{"to": "48600100200", "text": "...", "from": "CeR", "id": "<notice id>"}``;
- push service: ``POST <PUSH_URL>`` with JSON
  ``{"to": "<app account pseudonym>", "title": "...", "body": "...", "data": {...},
  "id": "<notice id>"}``;

both with ``Authorization: Bearer <token>`` (when a token is set) and
``Idempotency-Key: <notice id>``. Any 2xx is delivered; 408, 429, 5xx,
time-outs and connection errors are temporary (retried through the broker);
other 4xx are permanent. The HTTP session is opened on first use, inside the
running loop, and closed by ``close()``.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.ports import ChannelError, Notice

_TEMPORARY = frozenset({408, 425, 429})


class _HttpChannel:
    channel = "http"

    def __init__(self, url: str, *, token: str = "", timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def payload(self, notice: Notice) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, notice: Notice) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {"Idempotency-Key": notice.id}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self._session.post(
                self.url, json=self.payload(notice), headers=headers
            ) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ChannelError(f"{self.channel}: {type(exc).__name__}") from exc
        if 200 <= status < 300:
            return
        permanent = 400 <= status < 500 and status not in _TEMPORARY
        raise ChannelError(f"{self.channel}: HTTP {status}", permanent=permanent)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpSmsSender(_HttpChannel):
    """``SmsSender`` through an HTTP SMS gateway."""

    channel = "sms"

    def __init__(
        self, url: str, *, token: str = "", sender_name: str = "CeR", timeout: float = 10.0
    ) -> None:
        super().__init__(url, token=token, timeout=timeout)
        self.sender_name = sender_name

    def payload(self, notice: Notice) -> dict[str, Any]:
        return {"to": notice.to, "text": notice.text, "from": self.sender_name, "id": notice.id}


class HttpPushSender(_HttpChannel):
    """``PushSender`` through an HTTP push service."""

    channel = "push"

    def payload(self, notice: Notice) -> dict[str, Any]:
        return {
            "to": notice.to,
            "title": notice.subject,
            "body": notice.text,
            "data": {"kind": notice.kind, **dict(notice.data)},
            "id": notice.id,
        }
