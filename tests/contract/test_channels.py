"""Channel adapters against local receivers: SMTP (aiosmtpd), SMS gateway and push (aiohttp).

One contract per channel: a delivered notice arrives whole with its idempotency
key; a refusal is a permanent ``ChannelError``; an outage is a temporary one.
The embedded twins obey the same contract (``fail_next`` stands in for outages).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from adapters.http_channels import HttpPushSender, HttpSmsSender
from adapters.memory_channels import RecordingEmail, RecordingPush, RecordingSms
from adapters.smtp_email import SmtpEmailSender
from gateway.ports import ChannelError, Notice

NOTICE = Notice(
    id="ev1:sms",
    to="48600100200",
    text="Wizyta zarezerwowana: 12.01.2027 08:00. Kod: K7Q2",
    subject="Potwierdzenie wizyty",
    kind="booked",
    data={"appointment_id": "a1", "ref": "K7Q2"},
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- SMTP


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse: set[str] = set()
        self.busy = False

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.busy:
            return "421 try again later"
        if address in self.refuse:
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Any:
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_smtp_delivers_utf8_mail_with_message_id(smtp_server: Any) -> None:
    inbox, port = smtp_server
    sender = SmtpEmailSender("127.0.0.1", port, sender="CeR <no-reply@cer-gateway.org>")
    notice = Notice(
        id="ev1:email",
        to="jan@example.pl",
        text="Dzień dobry, wizyta zarezerwowana: 12.01.2027 o 08:00 (kardiologia).",
        subject="Potwierdzenie rezerwacji wizyty",
        kind="booked",
    )
    await sender.send(notice)
    assert len(inbox.messages) == 1
    msg = inbox.messages[0]
    assert msg["To"] == "jan@example.pl"
    assert msg["X-CeR-Notice-Id"] == "ev1:email"
    assert "ev1.email" in msg["Message-ID"]
    body = msg.get_payload(decode=True).decode(msg.get_content_charset() or "utf-8")
    assert "Dzień dobry" in body and "kardiologia" in body
    await sender.close()


async def test_smtp_refused_recipient_is_permanent(smtp_server: Any) -> None:
    inbox, port = smtp_server
    inbox.refuse.add("nobody@example.pl")
    sender = SmtpEmailSender("127.0.0.1", port, sender="no-reply@cer-gateway.org")
    with pytest.raises(ChannelError) as err:
        await sender.send(Notice(id="e:email", to="nobody@example.pl", text="x", subject="s"))
    assert err.value.permanent


async def test_smtp_4xx_is_temporary(smtp_server: Any) -> None:
    inbox, port = smtp_server
    inbox.busy = True
    sender = SmtpEmailSender("127.0.0.1", port, sender="no-reply@cer-gateway.org")
    with pytest.raises(ChannelError) as err:
        await sender.send(Notice(id="e:email", to="jan@example.pl", text="x", subject="s"))
    assert not err.value.permanent


async def test_smtp_server_down_is_temporary() -> None:
    sender = SmtpEmailSender("127.0.0.1", free_port(), sender="x@cer-gateway.org", timeout=2)
    with pytest.raises(ChannelError) as err:
        await sender.send(Notice(id="e:email", to="jan@example.pl", text="x", subject="s"))
    assert not err.value.permanent


# --------------------------------------------------------------------------- HTTP SMS / push


class _Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.json()))
        return web.json_response({"ok": self.status < 300}, status=self.status)


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Any]) -> AsyncIterator[tuple[_Receiver, str]]:
    rec = _Receiver()
    app = web.Application()
    app.router.add_post("/send", rec.handle)
    server = await aiohttp_server(app)
    yield rec, str(server.make_url("/send"))


async def test_sms_gateway_gets_json_with_token_and_idempotency_key(receiver: Any) -> None:
    rec, url = receiver
    sms = HttpSmsSender(url, token="s3cret", sender_name="CeR")
    await sms.send(NOTICE)
    headers, body = rec.requests[0]
    assert body == {"to": "48600100200", "text": NOTICE.text, "from": "CeR", "id": "ev1:sms"}
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Idempotency-Key"] == "ev1:sms"
    await sms.close()


async def test_push_service_gets_title_body_and_data(receiver: Any) -> None:
    rec, url = receiver
    push = HttpPushSender(url, token="t")
    await push.send(
        Notice(
            id="ev1:push",
            to="ab12",
            text="Tresc",
            subject="Tytul",
            kind="booked",
            data={"appointment_id": "a1"},
        )
    )
    _, body = rec.requests[0]
    assert body == {
        "to": "ab12",
        "title": "Tytul",
        "body": "Tresc",
        "data": {"kind": "booked", "appointment_id": "a1"},
        "id": "ev1:push",
    }
    await push.close()


@pytest.mark.parametrize(
    ("status", "permanent"), [(400, True), (404, True), (429, False), (500, False), (503, False)]
)
async def test_http_channel_failures(receiver: Any, status: int, permanent: bool) -> None:
    rec, url = receiver
    rec.status = status
    for sender in (HttpSmsSender(url), HttpPushSender(url)):
        with pytest.raises(ChannelError) as err:
            await sender.send(NOTICE)
        assert err.value.permanent is permanent
        await sender.close()


async def test_http_channel_unreachable_is_temporary() -> None:
    sms = HttpSmsSender(f"http://127.0.0.1:{free_port()}/send", timeout=2)
    with pytest.raises(ChannelError) as err:
        await sms.send(NOTICE)
    assert not err.value.permanent
    await sms.close()


# --------------------------------------------------------------------------- twins


@pytest.mark.parametrize("twin", [RecordingSms, RecordingEmail, RecordingPush])
async def test_twins_record_and_fail_on_demand(twin: Any) -> None:
    sender = twin()
    await sender.send(NOTICE)
    assert sender.sent == [NOTICE]
    sender.fail_next(2)
    for _ in range(2):
        with pytest.raises(ChannelError):
            await sender.send(NOTICE)
    await sender.send(NOTICE)
    assert len(sender.sent) == 2
    sender.fail_next(permanent=True)
    with pytest.raises(ChannelError) as err:
        await sender.send(NOTICE)
    assert err.value.permanent
    await asyncio.sleep(0)
