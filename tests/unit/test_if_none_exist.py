"""``parse_if_none_exist`` answers as its plainer first version (kept here as the
oracle): the same query back, or the same 400 with the same issue."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import FhirError, Issue
from gateway.http.fhir import IF_NONE_EXIST_PARAMS, parse_if_none_exist


def oracle(value: Any, where: str | None = None) -> str | None:
    if value is None:
        return None
    expr = [where] if where else []
    query = value.strip().lstrip("?") if isinstance(value, str) else ""
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise FhirError(400, [Issue("value", "If-None-Exist must be a search query", expr)])
    for name, val in params:
        if name not in IF_NONE_EXIST_PARAMS:
            raise FhirError(
                400,
                [
                    Issue(
                        "not-supported",
                        f"If-None-Exist supports {' and '.join(IF_NONE_EXIST_PARAMS)}, "
                        f"not {name!r}",
                        expr,
                    )
                ],
            )
        system, sep, code = val.partition("|")
        if not (code if sep else system).strip():
            raise FhirError(400, [Issue("value", f"If-None-Exist: {name} has no value", expr)])
    return query


def outcome(fn: Any, value: Any, where: str | None) -> Any:
    try:
        return fn(value, where)
    except FhirError as err:
        return err.status, [(i.code, i.diagnostics, i.expression) for i in err.issues]


parts = st.sampled_from(
    ["identifier", "_id", "name", "=", "|", "&", "?", " ", "%7C", "%", "+", "a", "s|v", "\t", ""]
)
values = (
    st.lists(parts, max_size=8).map("".join)
    | st.text(max_size=20)
    | st.sampled_from([None, 5, [], "identifier=http://x/sid|V-1", "?_id=a", " _id=a "])
)


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(values, st.sampled_from([None, "", "Bundle.entry[0].request.ifNoneExist"]))
def test_if_none_exist_answers_as_before(value: Any, where: str | None) -> None:
    assert outcome(parse_if_none_exist, value, where) == outcome(oracle, value, where)
