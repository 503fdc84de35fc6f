"""Structural validation at the boundary with fhir.resources (R4B models, R4 wire format).

fhir.resources checks structure, types and required elements; it does not check
code bindings or invariants (LIBRARIES.md): those are in each resource's mapping.
Its error locations become FHIRPath expressions for ``OperationOutcome``.

Before the model sees a body, its nesting depth is checked (``MAX_DEPTH``): the
models validate recursively (nested ``extension`` s are legal FHIR), and a body
nested a few hundred levels deep would otherwise exhaust Python's recursion
limit here or the serialiser's later; real resources nest a dozen levels.
"""

from __future__ import annotations

import importlib
from collections.abc import Container
from typing import Any

import orjson
import pydantic

from gateway.errors import FhirError, Issue

_MODELS: dict[str, type[Any]] = {}
# JSON objects and arrays inside one another, counting the resource itself.
MAX_DEPTH = 64


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


def too_deep(data: Any, root: str, limit: int = MAX_DEPTH) -> str | None:
    """The FHIRPath of the first element nested deeper than ``limit``, or ``None``.

    Iterative (the point is not to recurse on a client's nesting). The depth is
    measured a level at a time without paths, and stops one level past ``limit``;
    the path is worked out only for a body that is too deep (``_deep_path``): every
    resource is checked, and building a path for each of its elements was a tenth
    of a large Bundle's validation.
    """
    deep, _ = nesting(data, (), limit)
    return _deep_path(data, root, limit) if deep else None


def nesting(data: Any, names: Container[str], limit: int = MAX_DEPTH) -> tuple[bool, bool]:
    """``(too deep, names one)``: ``too_deep``'s question and whether a ``reference``
    in ``data`` is one of ``names``, in one walk (for a transaction's entries, which
    are looked through for references to the others before they are validated).

    The walk stops one level past ``limit``: the second answer holds only for a
    resource that is not too deep (one that is will be refused anyway). With no
    ``names`` it is ``too_deep``'s walk alone.
    """
    if not isinstance(data, (dict, list)):
        return False, False
    # Only the objects and arrays go to the next level (most values are text); a
    # level deeper than ``limit`` that has any is one too deep.
    level: list[Any] = [data]
    depth = 1
    named = False
    while True:
        inner: list[Any] = []
        add = inner.append
        for value in level:
            items = value
            kind = type(value)
            if kind is dict or (kind is not list and isinstance(value, dict)):
                if names and not named:
                    ref = value.get("reference")
                    named = isinstance(ref, str) and ref in names
                items = value.values()
            for item in items:
                kind = type(item)
                if kind is dict or kind is list or (kind is not str and isinstance(item, _NESTS)):
                    add(item)
        if depth > limit:
            return True, named
        if not inner:
            return False, named
        depth += 1
        level = inner


_NESTS = (dict, list)


def _deep_path(data: Any, root: str, limit: int) -> str | None:
    """``too_deep`` with the path of each element: the first one (depth first) too deep."""
    stack: list[tuple[Any, str, int]] = [(data, root, 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict):
            if depth > limit:
                return where
            stack.extend((v, f"{where}.{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            if depth > limit:
                return where
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, [Issue("structure", f"the body is not valid JSON: {exc}")]) from exc


def validate_resource(
    data: Any, expected: str | None = None, path: str | None = None, *, shallow: bool = False
) -> dict[str, Any]:
    """Check ``data`` is a structurally valid R4 resource (of type ``expected``).

    ``shallow``: the caller has found ``data`` no deeper than ``MAX_DEPTH``
    (``nesting``), so that is not checked again.
    """
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
    deep = None if shallow else too_deep(data, root)
    if deep is not None:
        raise FhirError(
            400,
            [
                Issue(
                    "too-costly",
                    f"the resource nests elements more than {MAX_DEPTH} levels deep",
                    [deep if len(deep) <= 1000 else root],
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
    except Exception as exc:
        # fhir.resources' own validators can fail on odd input instead of reporting it
        # (e.g. ``"_name": "null"`` raises AttributeError in its primitive-extension
        # check): the body is at fault either way, so it is a 400, never a 500.
        msg = (
            f"the resource is malformed ({type(exc).__name__} while validating it): look for "
            "null values and for _element primitive extensions that are not objects"
        )
        raise FhirError(400, [Issue("value", msg, [root])]) from exc
    return data
