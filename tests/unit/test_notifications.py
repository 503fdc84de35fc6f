"""Unit tests of the notification rules: reply grammar, phone numbers, due times
(Europe/Warsaw days across DST), the change classifier, references, templates,
and the exactly-once claim around a send (on the embedded store and twins)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from adapters.clock import SandboxClock
from adapters.memory_channels import RecordingEmail, RecordingPush, RecordingSms
from adapters.memory_store import MemoryStore
from gateway import constants as c
from gateway.metrics import Metrics
from gateway.notifications import (
    CLAIM_LEASE,
    TELLING,
    Notifier,
    Visit,
    classify,
    normalize_phone,
    reference,
)
from gateway.ports import ChannelError, Notice
from gateway.reminders import due_time
from gateway.schema import INDEXES
from gateway.sms_replies import Parsed, parse
from gateway.timeutil import to_store
from mappings import notifications as templates
from mappings.appointment import STATUSES  # every FHIR R4 Appointment status
from mappings.notifications import VisitFacts

WARSAW = ZoneInfo("Europe/Warsaw")


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ANULUJ", Parsed("cancel")),
        ("anuluj", Parsed("cancel")),
        ("  Anuluj.  ", Parsed("cancel")),
        ("ANULUJ K7Q2", Parsed("cancel", "K7Q2")),
        ("anuluj k7q2, dziękuję", Parsed("cancel", "K7Q2")),
        ("ANULUJ: K7Q2", Parsed("cancel", "K7Q2")),
        ("ODWOŁAJ K7Q2", Parsed("cancel", "K7Q2")),
        ("odwolaj", Parsed("cancel")),
        ("CANCEL K7Q2", Parsed("cancel", "K7Q2")),
        ("ANULUJ 1", Parsed("help")),  # not a reference: ask again
        ("REZYGNUJĘ", Parsed("leave-waiting-room")),
        ("rezygnuje z poczekalni", Parsed("leave-waiting-room")),
        ("POMOC", Parsed("help")),
        ("", Parsed("help")),
        ("Kiedy mam wizytę?", Parsed("help")),
        ("TAK", Parsed("help")),
    ],
)
def test_reply_grammar(text: str, expected: Parsed) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("+48 600 100 200", "48600100200"),
        ("0048600100200", "48600100200"),
        ("600-100-200", "48600100200"),
        ("48600100200", "48600100200"),
        ("+420 123 456 789", "420123456789"),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_phone_numbers_are_normalised(raw: str | None, digits: str | None) -> None:
    assert normalize_phone(raw) == digits


# --------------------------------------------------------------------------- due times


def w(y: int, m: int, d: int, hh: int, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=WARSAW)


@pytest.mark.parametrize(
    ("visit", "days", "due", "hours_before"),
    [
        (w(2027, 1, 13, 8), 7, w(2027, 1, 6, 8), 168),
        (w(2027, 1, 13, 8), 1, w(2027, 1, 12, 8), 24),
        # Spring forward on Sunday 28 March 2027: a week before Monday 29th is 167 h.
        (w(2027, 3, 29, 8), 7, w(2027, 3, 22, 8), 167),
        (w(2027, 3, 29, 8), 1, w(2027, 3, 28, 8), 24),
        (w(2027, 3, 28, 12), 1, w(2027, 3, 27, 12), 23),
        # Fall back on Sunday 31 October 2027.
        (w(2027, 10, 31, 8), 1, w(2027, 10, 30, 8), 25),
        (w(2027, 11, 3, 8), 7, w(2027, 10, 27, 8), 169),
        # Just after midnight: the day before is still the Warsaw calendar day.
        (w(2027, 1, 13, 0, 30), 1, w(2027, 1, 12, 0, 30), 24),
    ],
)
def test_due_times_are_warsaw_days(
    visit: datetime, days: int, due: datetime, hours_before: int
) -> None:
    got = due_time(visit.astimezone(UTC), days)
    assert got == due
    assert got.astimezone(WARSAW).hour == visit.hour
    assert (visit - got) == timedelta(hours=hours_before)


# --------------------------------------------------------------------------- classifier


def v(status: str, slot: str = "s1", start: str = "2027-01-13T07:00:00.000Z", **kw: Any) -> Visit:
    base: dict[str, Any] = {
        "tenant": "t",
        "id": "a",
        "version": 1,
        "status": status,
        "start": start,
        "scope": "cardiology",
        "category": "first-stable",
        "channel": "provider",
        "pesel": "44051401458",
        "phone": "48600100200",
        "email": None,
        "slot_id": slot,
        "cancel_reason": None,
    }
    base.update(kw)
    return Visit(**base)


@pytest.mark.parametrize(
    ("prev", "cur", "verb", "kind"),
    [
        (None, v("booked"), "created", "booked"),
        (None, v("pending"), "created", "booked"),
        (None, v("booked", channel="waiting-room"), "created", "assigned"),
        (None, v("waitlist", slot=None, start=None), "created", "waiting-room-entered"),
        (None, v("proposed"), "created", "proposal"),
        (None, v("cancelled"), "created", None),
        (v("booked"), v("booked"), "updated", None),  # e.g. a comment
        (v("booked"), v("booked", slot="s2"), "updated", "changed"),
        (v("booked"), v("booked", start="2027-01-14T07:00:00.000Z"), "updated", "changed"),
        (v("booked"), v("cancelled"), "updated", "cancelled"),
        (v("cancelled"), v("cancelled"), "updated", None),
        (v("cancelled"), v("booked"), "updated", "booked"),
        (v("waitlist"), v("booked", channel="waiting-room"), "updated", "assigned"),
        (v("waitlist"), v("proposed"), "updated", "proposal"),
        (v("proposed"), v("booked"), "updated", "assigned"),
        (v("waitlist"), v("cancelled"), "updated", "waiting-room-left"),
        (v("booked"), v("fulfilled"), "updated", None),
        (v("booked"), v("noshow"), "updated", None),
        (v("booked"), None, "deleted", "cancelled"),
        (v("fulfilled"), None, "deleted", None),
    ],
)
def test_classify(prev: Visit | None, cur: Visit | None, verb: str, kind: str | None) -> None:
    assert classify(prev, cur, verb) == kind


@pytest.mark.parametrize("status", [s for s in STATUSES if s not in TELLING])
def test_a_change_to_a_status_outside_telling_tells_nothing_whatever_came_before(
    status: str,
) -> None:
    # Notifier.on_appointment does not read the version before such a change.
    for channel in ("provider", "waiting-room"):
        cur = v(status, channel=channel)
        for before in [None, *(v(s, channel=channel) for s in STATUSES)]:
            for verb in ("created", "updated"):
                assert classify(before, cur, verb) is None


def test_reference_is_stable_short_and_avoids_the_phones_other_codes() -> None:
    ref = reference("t/Appointment/a1", set())
    assert ref == reference("t/Appointment/a1", set())
    assert len(ref) == 4 and re.fullmatch(r"[A-HJ-NP-Z2-9]+", ref)
    assert parse(f"ANULUJ {ref}") == Parsed("cancel", ref)
    longer = reference("t/Appointment/a1", {ref})
    assert longer.startswith(ref) and len(longer) == 5


# --------------------------------------------------------------------------- templates


FACTS = VisitFacts(
    start=w(2027, 1, 13, 8).astimezone(UTC),
    scope="mammography",
    category="control",
    place="Centrum Medyczne im. Świętej Łucji w Żółkiewce Górnej, Oddział Zamiejscowy",
    address="ul. Źródlana 5, Żółkiewka",
    ref="K7Q2",
    cancel_reason="patient-sms",
)


@pytest.mark.parametrize("lang", templates.LANGUAGES)
@pytest.mark.parametrize("kind", templates.kinds())
def test_every_template_renders_short_sms_and_no_placeholder(kind: str, lang: str) -> None:
    for channel in templates.CHANNELS:
        if not templates.has(kind, channel):
            continue
        subject, text = templates.render(kind, channel, lang, FACTS, choices="K7Q2 (13.01 08:00)")
        assert "{" not in text and "}" not in text and "{" not in subject
        if channel == "sms":
            assert text.isascii() and len(text) <= templates.SMS_MAX, text
            assert subject == ""
        assert not re.search(r"\d{11}", text)  # nothing shaped like a PESEL


def test_polish_is_the_default_and_messages_say_when_and_where() -> None:
    subject, text = templates.render("booked", "email", "pl", FACTS)
    assert "13.01.2027" in subject and "08:00" in subject
    assert "środa" in text and "Żółkiewka" in text and "ANULUJ K7Q2" in text
    _, text = templates.render("cancelled", "email", "pl", FACTS)
    assert "Odwołanie odpowiedzią na SMS" in text
    assert "skontaktuj się z placówką" in text  # a control visit is re-booked there (R-PAT-6)
    _, sms = templates.render("reminder-1d", "sms", "pl", FACTS)
    assert sms.startswith("CeR: jutro wizyta 13.01.2027 08:00, mammografia")
    _, en = templates.render("reminder-1d", "sms", "en", FACTS)
    assert en.startswith("CeR: visit tomorrow 13.01.2027 08:00, mammography")


# --------------------------------------------------------------------------- exactly once


@pytest.fixture
async def notifier() -> Notifier:
    store = MemoryStore()
    await store.start(INDEXES)
    return Notifier(
        store,
        SandboxClock(),
        Metrics(),
        sms=RecordingSms(),
        email=RecordingEmail(),
        push=RecordingPush(),
        sandbox=True,
    )


NOTICE = Notice(id="ev1:sms", to="48600100200", text="CeR: test", kind="booked")
META = {"tenant": "t", "appointment_id": "a1", "pesel": "44051401458"}


def sent(n: Notifier, channel: str = "sms") -> list[Notice]:
    sender = n.senders[channel]
    assert isinstance(sender, RecordingSms | RecordingEmail | RecordingPush)
    return sender.sent


async def test_a_sent_notice_is_never_sent_again(notifier: Notifier) -> None:
    assert await notifier.deliver("ev1", "sms", NOTICE, META) is True
    assert await notifier.deliver("ev1", "sms", NOTICE, META) is False
    assert len(sent(notifier)) == 1
    rec = await notifier.store.get(c.NOTIFICATIONS, "ev1:sms")
    assert rec is not None and rec["status"] == "sent" and rec["attempts"] == 1
    outbox = await notifier.store.find(c.SANDBOX_OUTBOX, {"pesel": "44051401458"})
    assert [o["_id"] for o in outbox] == ["ev1:sms"]


async def test_a_failed_try_is_tried_again_and_a_refusal_is_not(notifier: Notifier) -> None:
    sms = notifier.senders["sms"]
    assert isinstance(sms, RecordingSms)
    sms.fail_next(1)
    with pytest.raises(ChannelError):
        await notifier.deliver("ev1", "sms", NOTICE, META)
    assert await notifier.deliver("ev1", "sms", NOTICE, META) is True
    rec = await notifier.store.get(c.NOTIFICATIONS, "ev1:sms")
    assert rec is not None and rec["attempts"] == 2 and rec["status"] == "sent"

    sms.fail_next(1, permanent=True)
    other = Notice(id="ev2:sms", to="48600100200", text="x", kind="booked")
    with pytest.raises(ChannelError):
        await notifier.deliver("ev2", "sms", other, META)
    assert await notifier.deliver("ev2", "sms", other, META) is False  # not retried
    assert len(sent(notifier)) == 1


async def test_the_crash_window_between_send_and_record(notifier: Notifier) -> None:
    """A claim left 'sending' (crash after the send): held while fresh, resent once stale."""
    store, clock = notifier.store, notifier.clock
    await store.insert(
        c.NOTIFICATIONS,
        {
            "_id": "ev1:sms",
            "event_id": "ev1",
            "channel": "sms",
            "status": "sending",
            "claimed_at": to_store(clock.now()),
            "attempts": 1,
        },
    )
    with pytest.raises(ChannelError, match="another consumer"):
        await notifier.deliver("ev1", "sms", NOTICE, META)
    assert sent(notifier) == []
    assert isinstance(clock, SandboxClock)
    clock.advance(timedelta(seconds=CLAIM_LEASE + 1))
    assert await notifier.deliver("ev1", "sms", NOTICE, META) is True
    assert len(sent(notifier)) == 1  # the one resend the at-least-once window allows


async def test_logs_carry_no_contact_data_nor_text(notifier: Notifier) -> None:
    email = Notice(id="ev3:email", to="jan@example.pl", text="Dzień dobry", subject="s")
    with capture_logs() as logs:
        await notifier.deliver("ev1", "sms", NOTICE, META)
        await notifier.deliver("ev3", "email", email, META)
    dump = repr(logs)
    assert logs
    for secret in ("48600100200", "600100200", "jan@example.pl", "Dzień dobry", "44051401458"):
        assert secret not in dump


# --------------------------------------------------------------------------- reminders


async def test_reminders_are_queued_once_through_the_outbox() -> None:
    import asyncio

    from gateway.reminders import Reminders

    store = MemoryStore()
    await store.start(INDEXES)
    clock = SandboxClock()
    clock.set(w(2027, 1, 4, 9))
    signal = asyncio.Event()
    rem = Reminders(store, clock, Metrics(), signal)
    start = to_store(w(2027, 1, 13, 8))
    await rem.plan("t", "a1", start)
    await rem.plan("t", "a1", start)  # a redelivered event plans nothing new
    docs = await store.find(c.REMINDERS, {}, sort=[("due", 1)])
    assert [(d["kind"], d["due"], d["status"]) for d in docs] == [
        ("reminder-7d", to_store(w(2027, 1, 6, 8)), "pending"),
        ("reminder-1d", to_store(w(2027, 1, 12, 8)), "pending"),
    ]
    assert await rem.queue_due() == 0
    assert await rem.next_due() == w(2027, 1, 6, 8)

    clock.set(w(2027, 1, 6, 8, 1))
    assert await rem.queue_due() == 1
    assert await rem.queue_due() == 0  # exactly one event per reminder
    assert signal.is_set()
    events = [i.event for i in await store.pending_events()]
    assert [(e["type"], e["body"]["kind"]) for e in events] == [("reminder.due", "reminder-7d")]

    # The visit moves: the 1-day reminder is re-timed; cancelled: nothing pending.
    later = to_store(w(2027, 1, 20, 8))
    await rem.plan("t", "a1", later)
    one_day = await store.get(c.REMINDERS, "t/a1/reminder-1d")
    assert one_day is not None and one_day["due"] == to_store(w(2027, 1, 19, 8))
    await rem.cancel("t", "a1")
    assert await store.count(c.REMINDERS, {"status": "pending"}) == 0

    # Booked too late for both: nothing to send.
    await rem.plan("t", "a2", to_store(w(2027, 1, 6, 20)))
    late = await store.find(c.REMINDERS, {"appointment_id": "a2"})
    assert {d["status"] for d in late} == {"too-late"}
