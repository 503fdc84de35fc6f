"""Form helpers for handlers: read a posted form, collect errors per field, and
put a domain error (an OperationOutcome's issues) next to the field it is about.

Templates render fields with the macros of ``templates/_forms.html``: a label
for every field, the error under the label in plain words, ``aria-invalid`` and
``aria-describedby`` pointing at the error and the hint, and an error summary
at the top of the form that links to each field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.errors import FhirError, Issue

GENERAL = "__all__"  # errors about the whole form, shown in the summary only


@dataclass
class Form:
    """A posted (or prefilled) form: its values and the errors found in them."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def error(self, name: str, message: str) -> None:
        """Record ``message`` (already translated) for ``name``; the first one stays."""
        self.errors.setdefault(name, message)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> list[dict[str, str]]:
        """``[{field, message}]`` in the order found, for the error summary."""
        return [{"field": k, "message": v} for k, v in self.errors.items()]


async def read_form(request: web.Request) -> Form:
    """The posted fields as strings (file uploads are not used by these pages)."""
    data = await request.post()
    values = {k: v.strip() for k, v in data.items() if isinstance(v, str) and k != "csrf_token"}
    return Form(values=values)


def issues_to_fields(
    form: Form,
    issues: Iterable[Issue],
    fields: Mapping[str, str],
    translate_issue: Any = None,
) -> None:
    """Put each issue next to its field: ``fields`` maps a FHIRPath prefix
    (``Slot.start``, ``Appointment.participant``) to a form field name; the longest
    matching prefix wins; an issue matching none goes to the summary (``GENERAL``).
    ``translate_issue(issue) -> str`` gives the plain-words message (default: the
    issue's diagnostics)."""
    for issue in issues:
        message = translate_issue(issue) if translate_issue else issue.diagnostics
        target = GENERAL
        best = -1
        for expr in issue.expression or []:
            for prefix, name in fields.items():
                matches = (
                    expr == prefix or expr.startswith(prefix + ".") or expr.startswith(prefix + "[")
                )
                if matches and len(prefix) > best:
                    target, best = name, len(prefix)
        if target == GENERAL and target in form.errors:
            form.errors[GENERAL] += " " + message
        else:
            form.error(target, message)


def fhir_error_to_form(
    form: Form, err: FhirError, fields: Mapping[str, str], translate_issue: Any = None
) -> None:
    issues_to_fields(form, err.issues, fields, translate_issue)
