"""JSON logs with a correlation id and no personal data (ARCHITECTURE.md, Operations)."""

from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from gateway import pesel
from gateway.logging import (
    bind_correlation,
    configure_logging,
    mask_pii,
    mask_text,
    new_correlation_id,
)

PESEL = "44051401359"
EMAIL = "jan.kowalski@example.com.pl"
PHONE = "+48 601 234 567"
RAW_PII = [PESEL, "jan.kowalski", "example.com", "601 234 567", "601234567", "601-234-567"]


class Capture:
    def __init__(self, buf: io.StringIO) -> None:
        self.buf = buf

    def lines(self) -> list[dict[str, Any]]:
        text = self.buf.getvalue()
        assert text.endswith("\n")
        return [orjson.loads(line) for line in text.splitlines()]

    def raw(self) -> str:
        return self.buf.getvalue()

    def last(self) -> dict[str, Any]:
        return self.lines()[-1]


def _reset_stdlib() -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if type(h).__name__ == "_JsonHandler":
            root.removeHandler(h)


@pytest.fixture
def cap() -> Iterator[Capture]:
    root_level = logging.getLogger().level
    buf = io.StringIO()
    configure_logging("DEBUG", stream=buf)
    bind_correlation("c0ffee00c0ffee00c0ffee00c0ffee00")
    yield Capture(buf)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    _reset_stdlib()
    logging.getLogger().setLevel(root_level)


def assert_no_raw_pii(text: str) -> None:
    for raw in RAW_PII:
        assert raw not in text, raw


# --------------------------------------------------------------------------- shape


def test_every_line_is_json_with_correlation_level_and_utc_timestamp(cap: Capture) -> None:
    log = structlog.get_logger("gateway.test")
    log.info("first", n=1)
    log.warning("second", items=[1, 2])
    logging.getLogger("aiohttp.access").info("GET /fhir/metadata 200")
    logging.getLogger("aio_pika.robust_connection").warning("reconnecting")
    lines = cap.lines()
    assert len(lines) == 4
    for line in lines:
        assert line["correlation_id"] == "c0ffee00c0ffee00c0ffee00c0ffee00"
        assert line["level"] in ("info", "warning")
        ts = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert ts.utcoffset() == timedelta(0)
        assert line["timestamp"].endswith("Z")
    assert lines[0]["event"] == "first" and lines[0]["n"] == 1
    assert lines[2]["logger"] == "aiohttp.access"
    assert lines[2]["event"] == "GET /fhir/metadata 200"
    assert lines[3]["level"] == "warning"


def test_bind_correlation_clears_previous_context(cap: Capture) -> None:
    log = structlog.get_logger()
    bind_correlation("aaa", tenant="prov-1")
    log.info("one")
    bind_correlation("bbb")
    log.info("two")
    logging.getLogger("pymongo").info("three")
    one, two, three = cap.lines()
    assert one["correlation_id"] == "aaa" and one["tenant"] == "prov-1"
    assert two["correlation_id"] == "bbb" and "tenant" not in two
    assert three["correlation_id"] == "bbb"


def test_bind_correlation_leaves_what_clear_and_bind_leave(cap: Capture) -> None:
    # bind_correlation sets only what changes; the context must end as structlog's
    # clear_contextvars() + bind_contextvars(...) leave it, whatever was bound before.
    get = structlog.contextvars.get_contextvars
    structlog.contextvars.bind_contextvars(bound_elsewhere="x", tenant="prov-1")
    bind_correlation("aaa", message_id="m1", event="resource.Slot.created")
    assert get() == {"correlation_id": "aaa", "message_id": "m1", "event": "resource.Slot.created"}
    bind_correlation("aaa", message_id="m2", event="resource.Slot.created")
    assert get() == {"correlation_id": "aaa", "message_id": "m2", "event": "resource.Slot.created"}
    bind_correlation("bbb", a_key_never_bound_before=1)
    assert get() == {"correlation_id": "bbb", "a_key_never_bound_before": 1}
    bind_correlation("ccc", message_id="m3")
    assert get() == {"correlation_id": "ccc", "message_id": "m3"}
    structlog.get_logger().info("four")
    assert cap.last()["message_id"] == "m3" and "a_key_never_bound_before" not in cap.last()


def test_new_correlation_id() -> None:
    a, b = new_correlation_id(), new_correlation_id()
    assert a != b
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    assert uuid.UUID(hex=a).version == 4


def test_level_filtering() -> None:
    buf = io.StringIO()
    root_level = logging.getLogger().level
    try:
        configure_logging("warning", stream=buf)
        log = structlog.get_logger()
        log.info("hidden")
        log.debug("hidden")
        log.error("shown")
        logging.getLogger("aiohttp").info("hidden too")
        logging.getLogger("aiohttp").error("shown too")
        events = [orjson.loads(x)["event"] for x in buf.getvalue().splitlines()]
        assert events == ["shown", "shown too"]
    finally:
        structlog.reset_defaults()
        _reset_stdlib()
        logging.getLogger().setLevel(root_level)


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", stream=io.StringIO())


def test_reconfiguring_does_not_duplicate_stdlib_lines(cap: Capture) -> None:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    logging.getLogger("aiohttp").warning("once")
    assert len(buf.getvalue().splitlines()) == 1
    assert cap.raw() == ""


# --------------------------------------------------------------------------- masking


def test_pii_in_message_is_masked(cap: Capture) -> None:
    structlog.get_logger().info(f"booked for {PESEL}, phone {PHONE}, mail {EMAIL}")
    line = cap.last()
    assert line["event"] == "booked for ***PESEL***, phone ***PHONE***, mail ***EMAIL***"
    assert_no_raw_pii(cap.raw())


def test_pii_in_kwargs_is_masked(cap: Capture) -> None:
    structlog.get_logger().info(
        "request",
        patient=PESEL,
        note="call 601-234-567 or 22 123 45 67",
        reply_to=EMAIL,
        pesel_as_int=int(PESEL),
        sms_from="48601234567",
    )
    line = cap.last()
    assert line["patient"] == "***PESEL***"
    assert line["note"] == "call ***PHONE*** or ***PHONE***"
    assert line["reply_to"] == "***EMAIL***"
    assert line["pesel_as_int"] == "***"  # sensitive key
    assert line["sms_from"] == "***PHONE***"
    assert_no_raw_pii(cap.raw())


def test_values_of_sensitive_keys_are_dropped(cap: Capture) -> None:
    structlog.get_logger().info(
        "keys",
        pesel=PESEL,
        phone="anything at all",
        email=EMAIL,
        contact={"phone": PHONE, "email": EMAIL},
        name="Jan Kowalski",
        given=["Jan"],
        family="Kowalski",
        telecom=[{"system": "phone", "value": PHONE}],
        authorization="Bearer abc",
        token="abc",
        client_secret="s3cr3t",
        private_key="-----BEGIN",
        patientPesel="x",
        contact_phone="x",
        queue_name="cer.commands.1",
        missing_phone=None,
    )
    line = cap.last()
    for key in (
        "pesel",
        "phone",
        "email",
        "contact",
        "name",
        "given",
        "family",
        "telecom",
        "authorization",
        "token",
        "client_secret",
        "private_key",
        "patientPesel",
        "contact_phone",
    ):
        assert line[key] == "***", key
    assert line["queue_name"] == "cer.commands.1"  # "name" only as a whole key
    assert line["missing_phone"] is None
    assert "Kowalski" not in cap.raw() and "s3cr3t" not in cap.raw()
    assert_no_raw_pii(cap.raw())


def test_nested_pii_is_masked(cap: Capture) -> None:
    appointment = {
        "resourceType": "Appointment",
        "participant": [
            {
                "actor": {
                    "identifier": {
                        "system": "urn:oid:2.16.840.1.113883.3.4424.1.1.616",
                        "value": PESEL,
                    },
                    "display": "Jan Kowalski",
                },
            }
        ],
        "comment": [f"patient asked to call {PHONE}", ("tuple", EMAIL)],
        "contained": [{"resourceType": "Patient", "name": [{"family": "Kowalski"}]}],
        "headers": {"Authorization": "Bearer x.y.z"},
        PESEL: "as a key",
    }
    structlog.get_logger().info("fhir.received", body=appointment)
    body = cap.last()["body"]
    assert body["participant"][0]["actor"]["identifier"]["value"] == "***PESEL***"
    assert body["participant"][0]["actor"]["identifier"]["system"] == (
        "urn:oid:2.16.840.1.113883.3.4424.1.1.616"
    )
    assert body["comment"] == ["patient asked to call ***PHONE***", ["tuple", "***EMAIL***"]]
    assert body["contained"][0]["name"] == "***"
    assert body["headers"]["Authorization"] == "***"
    assert body["***PESEL***"] == "as a key"
    assert_no_raw_pii(cap.raw())


def test_pii_in_context_vars_is_masked(cap: Capture) -> None:
    bind_correlation("cid-1", patient=PESEL, sms_from="+48601234567")
    structlog.get_logger().info("ctx")
    line = cap.last()
    assert line["patient"] == "***PESEL***"
    assert line["sms_from"] == "***PHONE***"
    assert line["correlation_id"] == "cid-1"


def test_stdlib_message_args_and_extra_are_masked(cap: Capture) -> None:
    logging.getLogger("aiohttp.access").info(
        "GET /patient/v1/appointments?pesel=%s&email=%s", PESEL, EMAIL
    )
    logging.getLogger("aio_pika").warning(
        "message for %s", "601 234 567", extra={"pesel": PESEL, "detail": f"to {EMAIL}"}
    )
    first, second = cap.lines()
    assert first["event"] == "GET /patient/v1/appointments?pesel=***PESEL***&email=***EMAIL***"
    assert first["correlation_id"] == "c0ffee00c0ffee00c0ffee00c0ffee00"
    assert second["event"] == "message for ***PHONE***"
    assert second["pesel"] == "***"
    assert second["detail"] == "to ***EMAIL***"
    assert_no_raw_pii(cap.raw())


def test_exceptions_are_rendered_and_masked(cap: Capture) -> None:
    try:
        raise ValueError(f"no patient {PESEL} ({EMAIL})")
    except ValueError:
        structlog.get_logger().exception("failed")
        logging.getLogger("aiohttp.server").exception("Error handling request")
    ours, theirs = cap.lines()
    for line in (ours, theirs):
        assert "Traceback" in line["exception"]
        assert "ValueError: no patient ***PESEL*** (***EMAIL***)" in line["exception"]
        assert line["level"] == "error"
    assert_no_raw_pii(cap.raw())


def test_objects_are_masked(cap: Capture) -> None:
    @dataclass(frozen=True)
    class Principal:
        kind: str
        subject: str

    class Contact(BaseModel):
        note: str

    class Opaque:
        def __str__(self) -> str:
            return f"Opaque({PESEL})"

    structlog.get_logger().info(
        "objects",
        who=Principal("patient", PESEL),
        model=Contact(note=f"mail {EMAIL}"),
        raw=f"sms from {PHONE}".encode(),
        other=Opaque(),
        when=datetime(2026, 11, 25, 8, 0, tzinfo=UTC),
        day=date(2026, 11, 25),
    )
    line = cap.last()
    assert line["who"] == {"kind": "patient", "subject": "***PESEL***"}
    assert line["model"] == {"note": "mail ***EMAIL***"}
    assert line["raw"] == "sms from ***PHONE***"
    assert line["other"] == "Opaque(***PESEL***)"
    assert line["when"].startswith("2026-11-25T08:00:00")
    assert line["day"] == "2026-11-25"
    assert_no_raw_pii(cap.raw())


def test_ordinary_numbers_are_not_mangled(cap: Capture) -> None:
    some_uuid = uuid.uuid4()
    structlog.get_logger().info(
        "ordinary",
        referral="KEY123:1234",
        referral_code="1234",
        regon="12345678901234",
        regon9_oid="urn:oid:2.16.840.1.113883.3.4424.2.2.1",
        start="2026-11-25T08:00:00.123456Z",
        epoch=1764057600,
        epoch_ms=1764057600123,
        uuid=str(some_uuid),
        uuid_hex=some_uuid.hex,
        version='W/"12"',
        duration=0.123456789,
        duration_text="took 0.123456789 s",
        status=409,
        path="/fhir/Slot/abc/_history/3",
        hours="08:00-12:00",
        count=12,
        event_number=1234567890,
        cell_specialty="1100",
    )
    line = cap.last()
    assert line["referral"] == "KEY123:1234"
    assert line["referral_code"] == "1234"
    assert line["regon"] == "12345678901234"
    assert line["regon9_oid"] == "urn:oid:2.16.840.1.113883.3.4424.2.2.1"
    assert line["start"] == "2026-11-25T08:00:00.123456Z"
    assert line["epoch"] == 1764057600
    assert line["epoch_ms"] == 1764057600123
    assert line["uuid"] == str(some_uuid)
    assert line["uuid_hex"] == some_uuid.hex
    assert line["version"] == 'W/"12"'
    assert line["duration"] == 0.123456789
    assert line["duration_text"] == "took 0.123456789 s"
    assert line["status"] == 409
    assert line["path"] == "/fhir/Slot/abc/_history/3"
    assert line["hours"] == "08:00-12:00"
    assert line["event_number"] == 1234567890
    assert line["cell_specialty"] == "1100"
    assert "***" not in cap.raw()


# --------------------------------------------------------------------------- mask_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PESEL, "***PESEL***"),
        (f"pesel={PESEL}&x=1", "pesel=***PESEL***&x=1"),
        ("12345678901", "***PESEL***"),  # bad checksum: still personal data
        ("123456789012", "123456789012"),  # 12 digits: some other number
        ("12345678901234", "12345678901234"),  # REGON
        ("+48 123 456 789", "***PHONE***"),
        ("+48123456789", "***PHONE***"),
        ("48123456789", "***PHONE***"),
        ("0048 123-456-789", "***PHONE***"),
        ("(+48) 601 234 567", "***PHONE***"),
        ("123-456-789", "***PHONE***"),
        ("123 456 789", "***PHONE***"),
        ("tel. 123456789.", "tel. ***PHONE***."),
        ("22 123 45 67", "***PHONE***"),
        ("12345678", "12345678"),
        ("1234567890", "1234567890"),
        ("a@b.pl", "***EMAIL***"),
        ("Jan.Kowalski+cer@mail.example.org!", "***EMAIL***!"),
        ("user @ example", "user @ example"),
        ("Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig-_", "Bearer ***JWT***"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "***SECRET***"),
        ("-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY----- ok", "***SECRET*** ok"),
        ("2026-03-29T01:59:59+01:00", "2026-03-29T01:59:59+01:00"),
        ("1.5", "1.5"),
        ("", ""),
    ],
)
def test_mask_text(text: str, expected: str) -> None:
    assert mask_text(text) == expected


def test_mask_pii_processor_directly() -> None:
    ed = {"event": f"x {PESEL}", "timestamp": "2026-11-25T08:00:00Z", "pesel": PESEL, "n": 3}
    out = mask_pii(None, "info", ed)
    assert out == {
        "event": "x ***PESEL***",
        "timestamp": "2026-11-25T08:00:00Z",
        "pesel": "***",
        "n": 3,
    }


@given(
    born=st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)),
    sex=st.sampled_from(["female", "male"]),
    serial=st.integers(0, 4999),
    before=st.sampled_from(["", " ", "pesel=", "(", "/Patient/", "x:"]),
    after=st.sampled_from(["", " ", ",", ")", "&a=1", ".", "\n"]),
)
def test_any_pesel_is_masked(born: date, sex: str, serial: int, before: str, after: str) -> None:
    number = pesel.generate(born, sex, serial=serial)
    masked = mask_text(f"{before}{number}{after}")
    assert number not in masked
    assert masked == f"{before}***PESEL***{after}"


@given(st.uuids())
def test_uuids_survive(u: uuid.UUID) -> None:
    assert mask_text(u.hex) == u.hex
    assert mask_text(str(u)) == str(u)
    assert mask_text(f"corr={u.hex};") == f"corr={u.hex};"
