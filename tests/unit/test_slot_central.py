"""``mappings.slot.central_dict`` (the hot path of a Bundle's Slots) gives what the model
path gives, ``to_central(res).model_dump()``, for every input: the same dict (keys in
the same order, values of the same types), or the same error.

On the examples in ``docs/examples`` and on hypothesis-generated Slots: the example
with each element the mapping reads kept, dropped or replaced by a valid variant or
by an odd value (wrong types, ``str`` subclasses, out-of-range instants, junk).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import FhirError
from gateway.operations import central_of
from mappings import codes, references, slot

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


class Text(str):
    """A ``str`` subclass: equal to its text, but not the plain type the model keeps."""


def shape(value: Any) -> Any:
    """``value`` with the exact type of every part: ``==`` alone takes "a" == Text("a")."""
    if isinstance(value, dict):
        return ("dict", [(shape(k), shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [shape(v) for v in value])
    return (type(value), value)


def outcome(fn: Any, res: Any) -> Any:
    """What ``fn(res)`` gives: the result's shape, or the error's kind and content."""
    try:
        return ("ok", shape(fn(res)))
    except FhirError as err:
        return ("fhir", err.status, [(i.code, i.diagnostics, i.expression) for i in err.issues])
    except pydantic.ValidationError as err:
        return ("pydantic", [(e["type"], e["loc"]) for e in err.errors()])
    except Exception as err:  # whatever the model path raises, the fast one must too
        return ("raised", type(err))


def model_path(res: Any) -> Any:
    return slot.to_central(res).model_dump()


def check(res: Any) -> Any:
    expected = outcome(model_path, copy.deepcopy(res))
    assert outcome(slot.central_dict, copy.deepcopy(res)) == expected
    assert outcome(lambda r: central_of("Slot", r), copy.deepcopy(res)) == expected
    return expected


def example_slots() -> list[Any]:
    found = [example("slot.json")]
    for name in sorted(EXAMPLES.glob("*.json")):
        data = example(name.name)
        for entry in data.get("entry", []) if isinstance(data, dict) else []:
            res = entry.get("resource")
            if isinstance(res, dict) and res.get("resourceType") == "Slot":
                found.append(res)
                # as a transaction has it once the schedule's urn:uuid is resolved
                found.append({**res, "schedule": {"reference": "Schedule/sch-kardio-2027"}})
    return found


@pytest.mark.parametrize("res", example_slots())
def test_examples_map_the_same_both_ways(res: Any) -> None:
    check(res)


def test_the_example_takes_the_fast_way_and_the_odd_ones_the_models() -> None:
    res = example("slot.json")
    assert check(res)[0] == "ok"
    # a str subclass is converted to str by the model: the same comes out of both
    odd = {**res, "status": Text("free"), "comment": Text("x")}
    fast = slot.central_dict(odd)
    assert type(fast["status"]) is str and type(fast["comment"]) is str
    assert check(odd)[0] == "ok"
    # a comment that is not text is refused by the model, so by both
    assert check({**res, "comment": 5})[0] == "pydantic"
    assert check({**res, "identifier": [{"system": 5, "value": "v"}]})[0] == "pydantic"


SCOPE = {"system": codes.SCOPE_SYSTEM, "code": "cardiology"}
CELL = {"system": codes.CELL_SPECIALTY_SYSTEM, "code": "1101"}
ODD = st.sampled_from(
    [None, 0, 1, -1, 2.5, True, False, "", " ", "ż", "\ud800", [], {}, [None], {"a": 1}]
) | st.text(max_size=8).map(Text)
texts = st.text(max_size=12) | st.sampled_from(["free", "busy", "cardiology", "control"])
instants = st.sampled_from(
    [
        "2027-01-11T08:00:00+01:00",
        "2027-01-11T08:20:00+01:00",
        "2027-01-11T07:20:00Z",
        "2027-01-11T08:20:00.123456+01:00",
        "2027-01-11T08:20:00.123+14:00",
        "2027-01-11T08:20:00",
        "2027-01-11",
        "1900-01-01T00:30:00+01:00",
        "2999-12-31T23:59:59.999-01:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59Z",
        "not a date",
    ]
) | st.datetimes().map(lambda d: d.isoformat() + "Z")
codings = st.fixed_dictionaries(
    {},
    optional={
        "system": st.sampled_from(
            [codes.SCOPE_SYSTEM, codes.CELL_SPECIALTY_SYSTEM, codes.SLOT_CATEGORY_SYSTEM, "x"]
        )
        | ODD,
        "code": st.sampled_from([*codes.scopes(), *codes.slot_categories(), "1101", "9999"])
        | texts
        | ODD,
        "display": texts,
    },
)
concepts = st.fixed_dictionaries({}, optional={"coding": st.lists(codings, max_size=3) | ODD})
reference_elements = st.fixed_dictionaries(
    {},
    optional={
        "reference": st.sampled_from(
            [
                "Schedule/sch-1",
                "https://x.example/fhir/Schedule/s.1/_history/2",
                "Location/l1",
                "urn:uuid:0b7c7f5e-1f4e-4d8e-9d3f-2f1a7c9e0a11",
                "#c",
                "Schedule/",
            ]
        )
        | texts
        | ODD,
        "display": texts,
    },
)
identifiers = st.fixed_dictionaries(
    {}, optional={"system": texts | ODD, "value": texts | ODD, "use": texts}
)
ELEMENTS = {
    "status": st.sampled_from(slot.STATUSES) | texts | ODD,
    "schedule": reference_elements | ODD,
    "serviceType": st.lists(concepts | st.just({"coding": [SCOPE]}) | st.just({"coding": [CELL]}))
    | ODD,
    "appointmentType": concepts | ODD,
    "start": instants | ODD,
    "end": instants | ODD,
    "overbooked": st.booleans() | ODD,
    "comment": texts | ODD,
    "identifier": st.lists(identifiers | ODD, max_size=3) | ODD,
}


VALID = {
    "status": st.sampled_from(slot.STATUSES),
    "schedule": st.from_regex(r"Schedule/[A-Za-z0-9\-.]{1,64}", fullmatch=True).map(
        lambda ref: {"reference": ref}
    ),
    "serviceType": st.sampled_from(
        [[{"coding": [SCOPE]}], [{"coding": [CELL, SCOPE]}], [{"coding": [CELL]}, {"text": "x"}]]
    )
    | st.sampled_from(sorted(codes.scopes())).map(
        lambda c: [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": c}]}]
    ),
    "appointmentType": st.sampled_from(sorted(codes.slot_categories())).map(
        lambda c: {"coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": c}]}
    ),
    "start": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    "end": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    # a valid period: both ends, the end after the start
    "period": st.tuples(
        st.datetimes(
            min_value=datetime(1901, 1, 1), max_value=datetime(2998, 1, 1), timezones=st.timezones()
        ),
        st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3)),
    ).map(lambda p: (p[0].isoformat(), (p[0] + p[1]).isoformat())),
    "overbooked": st.booleans(),
    "comment": st.text(max_size=20),
    "identifier": st.lists(
        st.fixed_dictionaries({"value": st.text(min_size=1)}, optional={"system": st.text()}),
        max_size=3,
    ),
}


# one coding of one of our systems, good or not: the readers' shortcuts take some
one_coding = st.fixed_dictionaries(
    {
        "system": st.sampled_from(
            [codes.SCOPE_SYSTEM, codes.CELL_SPECIALTY_SYSTEM, codes.SLOT_CATEGORY_SYSTEM]
        ),
        "code": st.sampled_from(
            [*codes.scopes(), *codes.slot_categories(), *codes.cell_specialty_map(), "9999"]
        )
        | ODD,
    }
).map(lambda c: {"coding": [c]})
ONE_CODING = {
    "serviceType": st.lists(one_coding, min_size=1, max_size=2),
    "appointmentType": one_coding,
}


@st.composite
def slots(draw: st.DrawFn) -> dict[str, Any]:
    """The example, each element kept (mostly), dropped, varied or replaced by junk."""
    res: dict[str, Any] = example("slot.json")
    if draw(st.booleans()):
        res["start"], res["end"] = draw(VALID["period"])
    for name, values in ELEMENTS.items():
        how = draw(st.integers(min_value=0, max_value=11))
        if how == 0:
            res.pop(name, None)
        elif how == 1:
            res[name] = draw(values)
        elif how == 2 and name not in ("start", "end"):
            res[name] = draw(VALID[name])
        elif how in (3, 4) and name in ONE_CODING:
            res[name] = draw(ONE_CODING[name])
    return res


@settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(slots())
def test_generated_slots_map_the_same_both_ways(res: dict[str, Any]) -> None:
    check(res)


@settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(slots())
def test_the_short_ways_answer_as_the_long_ones(
    monkeypatch: pytest.MonkeyPatch, res: dict[str, Any]
) -> None:
    """The shortcuts for a plain Slot (one coding, a reference or an instant seen
    before) give what the readers' general ways give, issues included."""
    short = outcome(slot._read, copy.deepcopy(res))
    with monkeypatch.context() as m:
        m.setattr(codes, "plain_scope", lambda cc: None)
        m.setattr(codes, "plain_code", lambda cc, system, known: None)
        m.setattr(references, "_utc_instant", lambda value: None)
        m.setattr(references, "_split_text", references._split_text.__wrapped__)
        long = outcome(slot._read, copy.deepcopy(res))
    assert short == long
