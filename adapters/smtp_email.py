"""E-mail over SMTP with an asyncio client (aiosmtplib): the ``EmailSender`` port.

One connection per message: notifications are few per second and a fresh
connection has no state to go stale between bursts. The notice id becomes the
``Message-ID`` so a resend after a crash can be recognised by the receiver.
Failures: a 5xx reply (recipient or message refused, auth failed) is
permanent; 4xx replies, time-outs and connection errors are temporary.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

import aiosmtplib

from gateway.ports import ChannelError, Notice

Security = Literal["auto", "none", "starttls", "tls"]


class SmtpEmailSender:
    """``EmailSender`` over SMTP (see module docstring)."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        username: str = "",
        password: str = "",
        security: Security = "auto",
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username or None
        self.password = password or None
        self.security = security
        self.timeout = timeout

    def message(self, notice: Notice) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = notice.to
        msg["Subject"] = notice.subject
        msg["Date"] = formatdate(localtime=False)
        domain = self.sender.rpartition("@")[2].rstrip(">") or "cer-gateway.org"
        msg["Message-ID"] = make_msgid(idstring=notice.id.replace(":", "."), domain=domain)
        msg["X-CeR-Notice-Id"] = notice.id
        msg.set_content(notice.text, charset="utf-8")
        return msg

    async def send(self, notice: Notice) -> None:
        try:
            await aiosmtplib.send(
                self.message(notice),
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.security == "tls",
                start_tls={"auto": None, "none": False, "starttls": True, "tls": False}[
                    self.security
                ],
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            permanent = bool(codes) and all(500 <= code < 600 for code in codes)
            raise ChannelError(f"smtp: recipient refused {codes}", permanent=permanent) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx: refused for good (bad address, message, login); 4xx: try again later.
            raise ChannelError(f"smtp: {exc.code}", permanent=500 <= exc.code < 600) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise ChannelError(f"smtp: {type(exc).__name__}") from exc

    async def close(self) -> None:
        return None
