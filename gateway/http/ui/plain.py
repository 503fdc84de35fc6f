"""Domain errors in plain words: an OperationOutcome issue's diagnostics (precise,
technical, English: written for vendors' developers) as a receptionist would want
to read it, in the page's language. Known messages are matched by pattern; any
other keeps its diagnostics, so nothing the domain says is ever hidden."""

from __future__ import annotations

import re
from collections.abc import Callable

from gateway.errors import Issue
from gateway.http.ui.i18n import Translate

# (pattern on the diagnostics, plain English message; groups fill {0}, {1}, ...)
PLAIN: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), m)
    for p, m in (
        (
            r"Slot/\S+ is no longer free",
            "This slot has just been booked. Choose another slot.",
        ),
        (
            r"PESEL checksum is wrong: the last digit should be (\d)",
            "The last digit of this PESEL should be {0}: a digit is probably mistyped.",
        ),
        (r"PESEL must be exactly 11 digits", "A PESEL has exactly 11 digits."),
        (r"PESEL must contain digits 0-9 only", "A PESEL has digits only."),
        (
            r"PESEL encodes an invalid birth date",
            "This PESEL does not encode a real date of birth: check the first six digits.",
        ),
        (
            r"needs an e-referral",
            "A first-time visit in this scope needs an e-referral: enter its key and 4-digit code.",
        ),
        (r"e-referral key must be", "The e-referral key is 1-44 letters or digits."),
        (r"e-referral code must be exactly 4 digits", "The e-referral code has exactly 4 digits."),
        (
            r"first-privileged slot is for a patient",
            "This slot is for privileged patients: confirm that you checked the patient's "
            "out-of-turn entitlement.",
        ),
        (
            r"a phone number is 9-15 digits",
            "Enter a phone number of 9-15 digits, optionally starting with +.",
        ),
        (r"not an e-mail address", "Enter an e-mail address like name@example.pl."),
        (r"postalCode must look like 00-000", "Enter a postal code like 00-950."),
        (r"the slot must end after it starts", "The slot must end after it starts."),
        (
            r"If-Match asks for version",
            "Someone changed this in the meantime. Reload the page to see the current "
            "version, then try again.",
        ),
        (r"is changing concurrently", "Someone is changing this at the same time: try again."),
        (
            r"the change is queued but was not applied in time",
            "This is taking longer than usual: check in a moment whether it was saved.",
        ),
        (r"already has this identifier", "Another record already has this identifier."),
        (
            r"a cancellation carries a reason",
            "Choose the reason for the cancellation.",
        ),
        (
            r"does not exist for this provider",
            "It no longer exists: reload the page.",
        ),
    )
)


def plain(issue: Issue, _: Translate) -> str:
    """The issue in plain words in the page's language (its diagnostics if unknown)."""
    for pattern, message in PLAIN:
        m = pattern.search(issue.diagnostics)
        if m:
            text = _(message)
            return text.format(*m.groups()) if m.groups() else text
    return issue.diagnostics


def translator_for(_: Translate) -> Callable[[Issue], str]:
    return lambda issue: plain(issue, _)
