"""GET /patient/v1/slots over HTTP, on the embedded default and on RabbitMQ: every criterion
of R-CRIT-1, only what the patient may self-book (R-PAT-5, R-PAT-6, R-PAT-8), earliest first,
within the 40-day window (R-WAIT-2), paged by cursor."""

from __future__ import annotations

from typing import Any

from tests.e2e.patient_support import (
    Clinic,
    at,
    call,
    clinic,
    ids,
    patient,
    referral,
    search,
    set_clock,
)


async def two_clinics(client: Any) -> tuple[Clinic, Clinic]:
    a = await clinic(
        client,
        [
            ("mon08", at("2027-01-11", 8, 0), "first-stable"),
            ("mon0820", at("2027-01-11", 8, 20), "first-urgent"),
            ("mon0840", at("2027-01-11", 8, 40), "control"),
            ("mon09", at("2027-01-11", 9, 0), "first-privileged"),
            ("tue13", at("2027-01-12", 13, 0), "first-stable"),
            ("wed10", at("2027-01-13", 10, 0), "first-stable"),
            ("last", at("2027-02-13", 10, 0), "first-stable"),  # day 40: still bookable
            ("far", at("2027-02-14", 10, 0), "first-stable"),  # day 41: waiting room
        ],
        name="Poradnia A",
    )
    b = await clinic(
        client,
        [
            ("mon0740", at("2027-01-11", 7, 40), "first-stable"),
            ("thu15", at("2027-01-14", 15, 0), "first-stable"),
            ("sat09", at("2027-01-16", 9, 0), "first-stable"),
        ],
        name="Poradnia B",
        city="Warszawa",
        postal_code="00-950",
    )
    return a, b


async def test_search_each_criterion(client: Any) -> None:
    await set_clock(client)
    a, b = await two_clinics(client)
    p = await patient(client)
    await referral(client, p, category="stable")
    everything = [
        b.slots["mon0740"],
        a.slots["mon08"],
        a.slots["tue13"],
        a.slots["wed10"],
        b.slots["thu15"],
        b.slots["sat09"],
        a.slots["last"],
    ]
    status, page = await search(client, p, scope="cardiology")
    assert status == 200, page
    # earliest first; only first-stable (the referral's category); nothing past day 40
    assert ids(page) == everything
    assert page["categories"] == ["first-stable"]
    assert page["window_end"] == "2027-02-13"
    first = page["slots"][0]
    assert first["local_start"] == "2027-01-11T07:40:00+01:00"
    assert first["start"] == "2027-01-11T06:40:00Z"
    assert first["facility"] == {
        "id": b.facility,
        "name": "Poradnia B",
        "address": ["ul. Długa 5"],
        "postal_code": "00-950",
        "city": "Warszawa",
    }
    assert first["provider"]["id"] == b.provider_id

    # date from-to (a date is a whole Warsaw day; to is inclusive)
    _, page = await search(
        client, p, scope="cardiology", **{"from": "2027-01-12", "to": "2027-01-14"}
    )
    assert ids(page) == [a.slots["tue13"], a.slots["wed10"], b.slots["thu15"]]
    # an instant with its offset
    _, page = await search(
        client, p, scope="cardiology", **{"from": "2027-01-11T08:00:00+01:00", "to": "2027-01-12"}
    )
    assert ids(page) == [a.slots["mon08"], a.slots["tue13"]]
    # weekdays: 2 = Tuesday, 6 = Saturday
    _, page = await search(client, p, scope="cardiology", weekdays="2,6")
    assert ids(page) == [a.slots["tue13"], b.slots["sat09"], a.slots["last"]]
    # start hours in Polish time, [from, to)
    _, page = await search(client, p, scope="cardiology", hours="08:00-10:00")
    assert ids(page) == [a.slots["mon08"], b.slots["sat09"]]
    # location: postal code (exact or its beginning), city (any case), facility
    _, page = await search(client, p, scope="cardiology", postal_code="00-950")
    assert ids(page) == [b.slots["mon0740"], b.slots["thu15"], b.slots["sat09"]]
    _, page = await search(client, p, scope="cardiology", postal_code="31")
    assert ids(page) == [a.slots["mon08"], a.slots["tue13"], a.slots["wed10"], a.slots["last"]]
    _, page = await search(client, p, scope="cardiology", city="warszawa")
    assert ids(page) == [b.slots["mon0740"], b.slots["thu15"], b.slots["sat09"]]
    _, page = await search(client, p, scope="cardiology", facility=a.facility)
    assert ids(page) == [a.slots["mon08"], a.slots["tue13"], a.slots["wed10"], a.slots["last"]]
    # all together
    _, page = await search(
        client,
        p,
        scope="cardiology",
        city="Kraków",
        weekdays="1,2,3",
        hours="09:00-14:00",
        **{"from": "2027-01-11", "to": "2027-01-31"},
    )
    assert ids(page) == [a.slots["tue13"], a.slots["wed10"]]


async def test_paging_by_cursor(client: Any) -> None:
    await set_clock(client)
    a, b = await two_clinics(client)
    p = await patient(client)
    await referral(client, p)
    _, whole = await search(client, p, scope="cardiology")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"scope": "cardiology", "limit": "3"}
        if cursor:
            params["cursor"] = cursor
        status, page = await search(client, p, **params)
        assert status == 200, page
        assert len(page["slots"]) <= 3
        seen += ids(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ids(whole)
    # with a criterion the store cannot index (weekday): the same cursor paging
    _, page = await search(client, p, scope="cardiology", weekdays="1,4", limit="1")
    assert ids(page) == [b.slots["mon0740"]]
    _, page2 = await search(
        client, p, scope="cardiology", weekdays="1,4", limit="1", cursor=page["next_cursor"]
    )
    assert ids(page2) == [a.slots["mon08"]]


async def test_categories_follow_the_referral(client: Any) -> None:
    await set_clock(client)
    a, _b = await two_clinics(client)
    urgent = await patient(client)
    await referral(client, urgent, category="urgent")
    _, page = await search(client, urgent, scope="cardiology")
    assert ids(page) == [a.slots["mon0820"]]
    assert page["categories"] == ["first-urgent"]
    # a patient with no referral yet browses both first-time categories, never
    # control or first-privileged (R-PAT-5, R-PAT-6, R-PAT-8)
    browsing = await patient(client)
    _, page = await search(client, browsing, scope="cardiology", facility=a.facility)
    assert ids(page) == [
        a.slots["mon08"],
        a.slots["mon0820"],
        a.slots["tue13"],
        a.slots["wed10"],
        a.slots["last"],
    ]
    # narrowed to one referral of the patient's
    both = await patient(client)
    stable = await referral(client, both, category="stable")
    await referral(client, both, category="urgent")
    _, page = await search(client, both, scope="cardiology", facility=a.facility)
    assert len(page["slots"]) == 5
    _, page = await search(client, both, scope="cardiology", referral=stable["key"])
    assert page["categories"] == ["first-stable"]
    status, problem = await search(client, browsing, scope="cardiology", referral=stable["key"])
    assert (status, problem["code"]) == (422, "referral-required")


async def test_nothing_in_the_window_points_to_the_waiting_room(client: Any) -> None:
    await set_clock(client)
    await two_clinics(client)
    p = await patient(client)
    await referral(client, p)
    status, page = await search(client, p, scope="cardiology", **{"from": "2027-02-14"})
    assert status == 200
    assert page["slots"] == []
    assert page["waiting_room"] == "/patient/v1/waiting-room"  # R-WAIT-2
    # screening scopes have no waiting room; their window is 90 days (R-PAT-4)
    _, page = await search(client, p, scope="mammography")
    assert page["slots"] == [] and "waiting_room" not in page
    assert page["window_end"] == "2027-04-04"


async def test_bad_criteria_are_400_invalid(client: Any) -> None:
    await set_clock(client)
    p = await patient(client)
    for params in (
        {},
        {"scope": "dentistry"},
        {"scope": "cardiology", "weekdays": "0,8"},
        {"scope": "cardiology", "hours": "12:00-08:00"},
        {"scope": "cardiology", "hours": "8-12"},
        {"scope": "cardiology", "from": "11.01.2027"},
        {"scope": "cardiology", "from": "2027-01-12", "to": "2027-01-11"},
        {"scope": "cardiology", "postal_code": "31_147"},
        {"scope": "cardiology", "limit": "0"},
        {"scope": "cardiology", "cursor": "not-a-cursor"},
        {"scope": "cardiology", "sort": "start"},
    ):
        status, problem = await search(client, p, **params)
        assert status == 400, (params, problem)
        assert problem["code"] == "invalid"
        assert problem["detail"]


async def test_patient_token_required(client: Any) -> None:
    await set_clock(client)
    status, problem = await call(client, "GET", "/patient/v1/slots", None, scope="cardiology")
    assert (status, problem["code"]) == (401, "unauthorized")
    a = await clinic(client, [("s", at("2027-01-11"), "first-stable")])
    resp = await client.get(
        "/patient/v1/slots", params={"scope": "cardiology"}, headers=a.fhir_headers()
    )
    assert resp.status == 403
    assert (await resp.json())["code"] == "forbidden"
