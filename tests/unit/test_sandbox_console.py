"""The console's signature check: the Standard Webhooks library's verdict, in plain words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.webhook_http import sign_headers
from gateway.sandbox_console import check_signature
from gateway.webhooks import new_secret

BODY = '{"resourceType":"Bundle","type":"history"}'


def signed(secret: str, *, at: datetime | None = None, body: str = BODY) -> dict[str, str]:
    return sign_headers("sub-1", body.encode(), (secret,), at=at)


def test_a_fresh_delivery_verifies_with_the_current_secret() -> None:
    secret = new_secret()
    check = check_signature(BODY, signed(secret), [("current", secret)])
    assert check.ok
    assert check.message.english() == "valid signature with the current secret"


def test_an_old_delivery_still_verifies_and_says_a_replay_would_be_refused() -> None:
    secret = new_secret()
    headers = signed(secret, at=datetime.now(UTC) - timedelta(minutes=42))
    check = check_signature(BODY, headers, [("current", secret)])
    assert check.ok
    assert "42 minutes ago" in check.message.english()


def test_a_rotated_secret_names_the_previous_one() -> None:
    old, new = new_secret(), new_secret()
    check = check_signature(BODY, signed(old), [("current", new), ("previous", old)])
    assert check.ok and "previous" in check.message.english()


def test_a_wrong_secret_or_a_changed_body_does_not_verify_and_says_why() -> None:
    secret = new_secret()
    wrong = check_signature(BODY, signed(new_secret()), [("current", secret)])
    assert not wrong.ok
    assert "none of the 1 signature(s) matches" in wrong.message.english()
    changed = check_signature(BODY + " ", signed(secret), [("current", secret)])
    assert not changed.ok
    # an old request with a wrong signature is a mismatch, not merely "too old"
    stale = signed(new_secret(), at=datetime.now(UTC) - timedelta(hours=2))
    assert "matches" in check_signature(BODY, stale, [("current", secret)]).message.english()


def test_missing_headers_malformed_values_and_an_unknown_secret() -> None:
    secret = new_secret()
    headers = signed(secret)
    del headers["webhook-signature"]
    check = check_signature(BODY, headers, [("current", secret)])
    assert not check.ok and check.message.english() == "missing header(s): webhook-signature"
    bad_time = {**signed(secret), "webhook-timestamp": "yesterday"}
    assert (
        "not a Unix time"
        in check_signature(BODY, bad_time, [("current", secret)]).message.english()
    )
    bad_list = {**signed(secret), "webhook-signature": "garbage"}
    check = check_signature(BODY, bad_list, [("current", secret)])
    assert not check.ok and "version,signature" in check.message.english()
    gone = check_signature(BODY, signed(secret), [])
    assert not gone.ok and "gone" in gone.message.english()


def test_every_reason_the_console_shows_has_its_polish_text() -> None:
    """The reasons are built here, shown by the pages: each needs a catalog entry."""
    import re
    from pathlib import Path

    from gateway import sandbox_console
    from gateway.http.ui import i18n

    source = Path(sandbox_console.__file__).read_text("utf-8")
    texts = [
        "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))).replace('\\"', '"')
        for m in re.finditer(r'Message\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)', source)
    ]
    texts += list(sandbox_console.VALID.values())
    texts += [v + STALE for v in sandbox_console.VALID.values()]
    assert len(texts) > 10
    catalog = i18n.catalog("pl")
    assert [t for t in texts if t not in catalog] == []


STALE = (
    "; it was signed {minutes} minutes ago, so a receiver would now refuse this very "
    "request as a replay (Standard Webhooks allows 5 minutes)"
)
