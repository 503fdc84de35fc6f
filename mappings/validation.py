"""Structural validation at the boundary with fhir.resources (R4B models, R4 wire format).

fhir.resources checks structure, types and required elements; it does not check
code bindings or invariants (LIBRARIES.md): those are in each resource's mapping.
Its error locations become FHIRPath expressions for ``OperationOutcome``.
"""

from __future__ import annotations

import importlib
from typing import Any

import orjson
import pydantic

from gateway.errors import FhirError, Issue

_MODELS: dict[str, type[Any]] = {}


def model_for(rtype: str) -> type[Any]:
    if rtype not in _MODELS:
        module = importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}")
        _MODELS[rtype] = getattr(module, rtype)
    return _MODELS[rtype]


def fhirpath(root: str, loc: tuple[Any, ...]) -> str:
    """``('entry', 0, 'resource', 'start')`` -> ``Bundle.entry[0].resource.start``."""
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "__root__" or (isinstance(part, str) and part.startswith("function-")):
            continue
        else:
            out += f".{part}"
    return out


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, [Issue("structure", f"the body is not valid JSON: {exc}")]) from exc


def validate_resource(
    data: Any, expected: str | None = None, path: str | None = None
) -> dict[str, Any]:
    """Check ``data`` is a structurally valid R4 resource (of type ``expected``)."""
    root = path or expected or "Resource"
    if not isinstance(data, dict):
        raise FhirError(400, [Issue("structure", "a FHIR resource must be a JSON object", [root])])
    rtype = data.get("resourceType")
    if not isinstance(rtype, str):
        raise FhirError(
            400, [Issue("required", "resourceType is missing", [f"{root}.resourceType"])]
        )
    if expected is not None and rtype != expected:
        raise FhirError(
            400,
            [
                Issue(
                    "invalid",
                    f"resourceType is {rtype!r} but this endpoint takes {expected}",
                    [f"{root}.resourceType"],
                )
            ],
        )
    try:
        model = model_for(rtype)
    except (ImportError, AttributeError) as exc:
        raise FhirError(
            400,
            [Issue("not-supported", f"unknown resourceType {rtype!r}", [f"{root}.resourceType"])],
        ) from exc
    try:
        model.model_validate(data)
    except pydantic.ValidationError as exc:
        issues = []
        for err in exc.errors()[:50]:
            loc = tuple(err.get("loc", ()))
            where = fhirpath(path or rtype, loc)
            kind = err.get("type", "")
            code = (
                "structure"
                if kind == "extra_forbidden"
                else ("required" if kind == "missing" else "value")
            )
            msg = err.get("msg", "invalid")
            if kind == "extra_forbidden":
                msg = f"unknown element {loc[-1]!r}" if loc else msg
            issues.append(Issue(code, msg, [where]))
        raise FhirError(400, issues) from exc
    except (ValueError, TypeError) as exc:
        raise FhirError(400, [Issue("value", str(exc)[:500], [root])]) from exc
    return data
