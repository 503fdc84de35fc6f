"""Embedded twins of the patient channels: they record what would have been sent.

Used when no SMTP host / SMS gateway / push service is configured. They keep
the notices in memory (tests read ``sent``); ``fail_next`` makes the next
sends raise ``ChannelError`` so retries and dead letters can be exercised.
In sandbox mode the notification service also captures every notice in the
store for ``GET /sandbox/outbox``, whichever adapter sent it.
"""

from __future__ import annotations

import structlog

from gateway.ports import ChannelError, Notice

log = structlog.get_logger("adapters.memory_channels")


class RecordingSender:
    """One channel's twin (``SmsSender``, ``EmailSender`` or ``PushSender``)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.sent: list[Notice] = []
        self._fail = 0
        self._permanent = False

    def fail_next(self, times: int = 1, *, permanent: bool = False) -> None:
        """Make the next ``times`` sends fail (temporary unless ``permanent``)."""
        self._fail = times
        self._permanent = permanent

    async def send(self, notice: Notice) -> None:
        if self._fail > 0:
            self._fail -= 1
            raise ChannelError(f"{self.channel} twin told to fail", permanent=self._permanent)
        self.sent.append(notice)
        log.info("notification.recorded", channel=self.channel, kind=notice.kind, id=notice.id)

    async def close(self) -> None:
        return None


class RecordingSms(RecordingSender):
    def __init__(self) -> None:
        super().__init__("sms")


class RecordingEmail(RecordingSender):
    def __init__(self) -> None:
        super().__init__("email")


class RecordingPush(RecordingSender):
    def __init__(self) -> None:
        super().__init__("push")
