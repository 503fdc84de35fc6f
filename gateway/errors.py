"""Errors the application raises; the HTTP layer renders them.

``FhirError`` becomes an ``OperationOutcome`` on the FHIR side and a
problem+json body on the patient side (its ``code`` is the stable
machine-readable code of the patient contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Issue:
    """One ``OperationOutcome.issue``: what went wrong and where (FHIRPath)."""

    code: str  # FHIR issue-type: invalid, structure, required, value, conflict, not-found, ...
    diagnostics: str
    expression: list[str] = field(default_factory=list)
    severity: str = "error"

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


class FhirError(Exception):
    """An error with an HTTP status, FHIR issues and a stable patient-side ``code``."""

    def __init__(
        self,
        status: int,
        issues: list[Issue] | str,
        *,
        code: str | None = None,
        issue_code: str = "invalid",
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(issues, str):
            issues = [Issue(issue_code, issues)]
        self.status = status
        self.issues = issues
        self.code = code or issues[0].code
        self.extra = extra or {}
        self.headers = headers or {}
        super().__init__(issues[0].diagnostics if issues else str(status))

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)

    def to_reply(self) -> dict[str, Any]:
        """Carried over the bus as a command's reply."""
        return {
            "error": {
                "status": self.status,
                "code": self.code,
                "issues": [i.to_fhir() for i in self.issues],
                "extra": self.extra,
            }
        }

    @classmethod
    def from_reply(cls, err: dict[str, Any]) -> FhirError:
        issues = [
            Issue(
                code=i.get("code", "invalid"),
                diagnostics=i.get("diagnostics", ""),
                expression=list(i.get("expression", [])),
                severity=i.get("severity", "error"),
            )
            for i in err.get("issues", [])
        ] or [Issue("exception", "unknown error")]
        return cls(err.get("status", 500), issues, code=err.get("code"), extra=err.get("extra"))


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def not_found(what: str) -> FhirError:
    return FhirError(404, [Issue("not-found", f"{what} not found")], code="not-found")


def version_conflict(expected: int, actual: int | None) -> FhirError:
    msg = (
        f"If-Match asks for version {expected} but the current version is {actual}"
        if actual is not None
        else f"If-Match asks for version {expected} but the resource does not exist"
    )
    return FhirError(412, [Issue("conflict", msg)], code="version-mismatch")
