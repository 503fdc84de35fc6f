"""``bundles.prepare_bundle`` validates every entry, then maps every entry (two steps
for the whole Bundle): it answers as it did entry by entry (``fhir.prepare`` each in
turn, kept here as the oracle), ops and errors alike, issues in the same order.

On the fuzz test's generated Bundles (valid, mutated and junk) and on the week example.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from gateway.errors import FhirError, Issue
from gateway.http import bundles
from gateway.http.bundles import entry_request, parse_entries, prepare_raw
from gateway.http.fhir import parse_if_match, parse_if_none_exist, prepare
from mappings.references import rewrite_references
from mappings.validation import nesting, parse_json
from tests.e2e.test_fuzz import bundles as fuzz_bundles
from tests.e2e.test_fuzz import encode

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
WEEK = EXAMPLES / "transaction-week-cardiology.json"


def counted_ids() -> Iterator[str]:
    return (f"id{n}" for n in itertools.count())


def oracle_bundle(btype: str, entries: list[Any]) -> list[dict[str, Any] | FhirError]:
    """``prepare_bundle`` as it was: each entry validated and mapped before the next."""
    parsed: list[tuple[str, str, str, dict[str, Any], Any, str | None]] = []
    issues: list[Issue] = []
    early: dict[int, FhirError] = {}
    renames: dict[str, str] = {}
    ids = counted_ids()
    for i, entry in enumerate(entries):
        try:
            method, rtype, rid, req = entry_request(i, entry)
        except FhirError as err:
            issues.extend(err.issues)
            early[i] = err
            parsed.append(("", "", "", {}, None, None))
            continue
        rid = rid or next(ids)
        full_url = entry.get("fullUrl")
        if full_url is not None:
            if full_url in renames:
                twice = FhirError(
                    400,
                    [
                        Issue(
                            "duplicate",
                            f"fullUrl {full_url!r} appears twice in the Bundle",
                            [f"Bundle.entry[{i}].fullUrl"],
                        )
                    ],
                )
                issues.extend(twice.issues)
                early[i] = twice
                parsed.append(("", "", "", {}, None, None))
                continue
            renames[full_url] = f"{rtype}/{rid}"
        parsed.append((method, rtype, rid, req, entry.get("resource"), full_url))
    ops: list[dict[str, Any] | FhirError] = []
    for i, (method, rtype, rid, req, data, full_url) in enumerate(parsed):
        if i in early:
            ops.append(early[i])
            continue
        if method != "DELETE" and data is None:
            missing = FhirError(
                400,
                [Issue("required", "entry.resource is required", [f"Bundle.entry[{i}].resource"])],
            )
            issues.extend(missing.issues)
            ops.append(missing)
            continue
        shallow = False
        if btype == "transaction" and data is not None:
            deep, named = nesting(data, renames)
            shallow = not deep
            if named and shallow:
                data = rewrite_references(data, renames)
        if isinstance(data, dict) and method == "POST" and ("id" in data or "meta" in data):
            data = {k: v for k, v in data.items() if k not in ("id", "meta")}
        where = f"Bundle.entry[{i}].request"
        try:
            op = prepare(
                method,
                rtype,
                rid,
                data,
                if_match=parse_if_match(req.get("ifMatch"), f"{where}.ifMatch"),
                if_none_exist=(
                    parse_if_none_exist(req.get("ifNoneExist"), f"{where}.ifNoneExist")
                    if method == "POST"
                    else None
                ),
                root=f"Bundle.entry[{i}].resource",
                full_url=full_url,
                shallow=shallow,
            )
            op["index"] = i
            ops.append(op)
        except FhirError as err:
            issues.extend(err.issues)
            ops.append(err)
    if btype == "transaction" and issues:
        statuses = {op.status for op in ops if isinstance(op, FhirError)}
        raise FhirError(422 if statuses == {422} else 400, issues)
    return ops


def oracle_raw(raw: bytes) -> Any:
    """``prepare_raw`` over the oracle."""
    try:
        btype, entries = parse_entries(parse_json(raw))
        ops = oracle_bundle(btype, entries)
    except FhirError as err:
        return err.to_reply()["error"]
    good = [op for op in ops if isinstance(op, dict)]
    errors = {i: op.to_reply()["error"] for i, op in enumerate(ops) if isinstance(op, FhirError)}
    return btype, orjson.dumps(good), errors, len(ops)


@pytest.fixture(autouse=True)
def _counted_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundles, "new_resource_ids", counted_ids)


def same(raw: bytes) -> None:
    assert prepare_raw(raw) == oracle_raw(raw)


def test_the_week_and_its_broken_copies() -> None:
    week = json.loads(WEEK.read_text(encoding="utf-8"))
    same(orjson.dumps(week))
    for btype in ("transaction", "batch"):
        broken = copy.deepcopy(week)
        broken["type"] = btype
        entries = broken["entry"]
        entries[3]["resource"]["status"] = "open"  # a mapping error (422)
        entries[5]["resource"]["start"] = 7  # a structural one (400)
        del entries[7]["resource"]  # no resource
        entries[9]["request"]["ifNoneExist"] = "name=x"  # a bad request
        entries[11]["resource"]["schedule"] = {"reference": "Location/x"}  # 422
        entries[-1]["request"]["method"] = "PATCH"  # refused early
        same(orjson.dumps(broken))


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(fuzz_bundles())
def test_generated_bundles_answer_as_entry_by_entry(bundle: Any) -> None:
    same(encode(bundle))
