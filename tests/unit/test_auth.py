"""Access tokens and RFC 7523 / SMART Backend Services client assertions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import jwt
import pytest

from gateway.auth import (
    ASSERTION_TYPE,
    AuthError,
    Principal,
    TokenService,
    generate_client_keypair,
    make_client_assertion,
    parse_token_request,
    verify_client_assertion,
)

SECRET = b"0123456789abcdef0123456789abcdef"
AUD = "https://cer.example.org/auth/token"
CLIENT = "client-7f3a"
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


class FakeClock:
    """The Clock port's ``now()``, moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def advance(self, **kw: float) -> None:
        self.current += timedelta(**kw)


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_client_keypair()


@pytest.fixture(scope="module")
def other_keys() -> tuple[str, str]:
    return generate_client_keypair()


def form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


async def verify(assertion: str, public_pem: str, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "client_id": CLIENT,
        "public_key_pem": public_pem,
        "audience": AUD,
        "now": T0,
        "seen_jti": set(),
    }
    args.update(kw)
    return await verify_client_assertion(assertion, **args)


def signed(
    private_pem: str, *, alg: str = "ES256", drop: tuple[str, ...] = (), **claims: Any
) -> str:
    """A hand-made assertion, for claims make_client_assertion would never produce."""
    base: dict[str, Any] = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": AUD,
        "iat": int(T0.timestamp()),
        "exp": int(T0.timestamp()) + 120,
        "jti": "j-1",
    }
    base.update(claims)
    payload = {k: v for k, v in base.items() if v is not None and k not in drop}
    return jwt.encode(payload, private_pem, algorithm=alg)


# --------------------------------------------------------------------------- access tokens


def test_issue_and_verify() -> None:
    clock = FakeClock(T0)
    tokens = TokenService(SECRET, 3600, clock)
    token = tokens.issue(Principal("provider", "prov-1"))
    assert tokens.verify(token) == Principal("provider", "prov-1")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "cer-gateway"
    assert claims["sub"] == "prov-1" and claims["kind"] == "provider"
    assert claims["iat"] == int(T0.timestamp())
    assert claims["exp"] == int(T0.timestamp()) + 3600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert (
        claims["jti"]
        != jwt.decode(
            tokens.issue(Principal("provider", "prov-1")), options={"verify_signature": False}
        )["jti"]
    )


def test_patient_token() -> None:
    tokens = TokenService(SECRET, 60, FakeClock(T0))
    who = tokens.verify(tokens.issue(Principal("patient", "44051401359")))
    assert who.kind == "patient" and who.subject == "44051401359"


def test_expiry_follows_the_clock_not_the_wall() -> None:
    clock = FakeClock(T0)
    tokens = TokenService(SECRET, 600, clock)
    token = tokens.issue(Principal("patient", "44051401359"))
    clock.advance(seconds=599)
    assert tokens.verify(token).subject == "44051401359"
    clock.advance(seconds=1)
    with pytest.raises(AuthError, match="expired") as err:
        tokens.verify(token)
    assert err.value.code == "invalid_token" and err.value.status == 401
    clock.advance(seconds=-2)  # a sandbox clock may be set back
    assert tokens.verify(token).kind == "patient"


def test_a_clock_far_from_the_wall_is_honoured() -> None:
    past = FakeClock(datetime(2001, 1, 1, tzinfo=UTC))  # wall-clock expired long ago
    tokens = TokenService(SECRET, 60, past)
    assert tokens.verify(tokens.issue(Principal("provider", "p"))).subject == "p"
    future = FakeClock(datetime(2090, 1, 1, tzinfo=UTC))  # iat far after the wall
    tokens = TokenService(SECRET, 60, future)
    assert tokens.verify(tokens.issue(Principal("provider", "p"))).subject == "p"


def test_bad_signature() -> None:
    clock = FakeClock(T0)
    token = TokenService(b"x" * 32, 60, clock).issue(Principal("provider", "p"))
    with pytest.raises(AuthError, match="signature") as err:
        TokenService(SECRET, 60, clock).verify(token)
    assert err.value.code == "invalid_token"


def test_tampered_payload() -> None:
    tokens = TokenService(SECRET, 60, FakeClock(T0))
    head, _, sig = tokens.issue(Principal("patient", "44051401359")).split(".")
    forged_body = jwt.encode(
        {
            "iss": "cer-gateway",
            "sub": "05222800007",
            "kind": "patient",
            "iat": 1,
            "exp": 2**40,
            "jti": "x",
        },
        SECRET,
    ).split(".")[1]
    with pytest.raises(AuthError, match="signature"):
        tokens.verify(f"{head}.{forged_body}.{sig}")


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.sig"],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(AuthError) as err:
        TokenService(SECRET, 60, FakeClock(T0)).verify(token)
    assert err.value.code == "invalid_token"


def _hs(claims: dict[str, Any], alg: str = "HS256", key: bytes = SECRET) -> str:
    return jwt.encode(claims, key, algorithm=alg)


GOOD = {"iss": "cer-gateway", "sub": "p", "kind": "provider", "iat": 0, "jti": "j"}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (_hs({**GOOD, "iss": "someone-else", "exp": 2**40}), "not issued by this gateway"),
        (_hs({**GOOD}), "lacks the 'exp' claim"),
        (_hs({**GOOD, "exp": 2**40, "kind": "admin"}), "malformed"),
        (_hs({**GOOD, "exp": 2**40, "sub": ""}), "malformed"),
        (_hs({**GOOD, "exp": "never"}), "malformed"),
        (
            _hs({**GOOD, "exp": 2**40}, alg="HS512", key=SECRET * 2),
            "malformed",
        ),  # only HS256 accepted
        (jwt.encode({**GOOD, "exp": 2**40}, cast(Any, None), algorithm="none"), "malformed"),
    ],
)
def test_rejected_claims(token: str, message: str) -> None:
    with pytest.raises(AuthError, match=message) as err:
        TokenService(SECRET, 60, FakeClock(T0)).verify(token)
    assert err.value.code == "invalid_token"


def test_token_service_refuses_weak_settings() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenService(b"short", 60, FakeClock(T0))
    with pytest.raises(ValueError, match="ttl"):
        TokenService(SECRET, 0, FakeClock(T0))


def test_naive_clock_is_refused() -> None:
    tokens = TokenService(SECRET, 60, FakeClock(datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="naive"):
        tokens.issue(Principal("provider", "p"))


def test_auth_error_status() -> None:
    assert AuthError("invalid_client", "x").status == 401
    assert AuthError("invalid_request", "x").status == 400
    assert AuthError("unsupported_grant_type", "x").status == 400
    assert str(AuthError("invalid_grant", "why")) == "invalid_grant: why"


# --------------------------------------------------------------------------- key pairs


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS384"])
async def test_key_pair_and_assertion_per_algorithm(alg: str) -> None:
    private_pem, public_pem = generate_client_keypair(alg)
    assert private_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assertion = make_client_assertion(private_pem, CLIENT, AUD, T0)
    assert jwt.get_unverified_header(assertion)["alg"] == alg
    assert jwt.get_unverified_header(assertion)["typ"] == "JWT"
    claims = await verify(assertion, public_pem)
    assert claims["iss"] == claims["sub"] == CLIENT


def test_unknown_key_algorithm() -> None:
    with pytest.raises(ValueError, match="unsupported algorithm"):
        generate_client_keypair("HS256")


def test_assertion_algorithm_must_fit_the_key(keys: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        make_client_assertion(keys[0], CLIENT, AUD, T0, alg="RS384")


def test_assertion_claims(keys: tuple[str, str]) -> None:
    a = make_client_assertion(keys[0], CLIENT, AUD, T0, alg="ES256", kid="k1")
    claims = jwt.decode(a, options={"verify_signature": False})
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["aud"] == AUD
    assert claims["iat"] == int(T0.timestamp())
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["jti"]
    assert jwt.get_unverified_header(a)["kid"] == "k1"
    b = make_client_assertion(keys[0], CLIENT, AUD, T0)
    assert jwt.decode(b, options={"verify_signature": False})["jti"] != claims["jti"]


# --------------------------------------------------------------------------- the flow


async def test_full_client_credentials_flow(keys: tuple[str, str]) -> None:
    private_pem, public_pem = keys
    clock = FakeClock(T0)
    assertion = make_client_assertion(private_pem, CLIENT, AUD, clock.now())
    client_id, got, scope = parse_token_request(form(assertion, scope="system/*.cruds"))
    assert (client_id, got, scope) == (CLIENT, assertion, "system/*.cruds")
    seen: set[str] = set()
    await verify_client_assertion(
        got,
        client_id=client_id,
        public_key_pem=public_pem,
        audience=AUD,
        now=clock.now(),
        seen_jti=seen,
    )
    tokens = TokenService(SECRET, 300, clock)
    access = tokens.issue(Principal("provider", "prov-1"))
    assert tokens.verify(access) == Principal("provider", "prov-1")
    # The same assertion a second time is a replay.
    with pytest.raises(AuthError, match="replay") as err:
        await verify_client_assertion(
            got,
            client_id=client_id,
            public_key_pem=public_pem,
            audience=AUD,
            now=clock.now(),
            seen_jti=seen,
        )
    assert err.value.code == "invalid_client"


# --------------------------------------------------------------------------- assertion failures


async def expect_invalid_client(coro: Any, message: str) -> AuthError:
    with pytest.raises(AuthError, match=message) as err:
        await coro
    assert err.value.code == "invalid_client"
    assert err.value.status == 401
    return err.value


async def test_wrong_key(keys: tuple[str, str], other_keys: tuple[str, str]) -> None:
    assertion = make_client_assertion(other_keys[0], CLIENT, AUD, T0)
    await expect_invalid_client(verify(assertion, keys[1]), "signature does not verify")


async def test_key_of_another_type(keys: tuple[str, str]) -> None:
    _, es384_public = generate_client_keypair("ES384")
    assertion = make_client_assertion(keys[0], CLIENT, AUD, T0)  # ES256
    await expect_invalid_client(verify(assertion, es384_public), "does not fit")


async def test_algorithm_confusion_is_refused(keys: tuple[str, str]) -> None:
    # HS256 "signed" with the public key as the HMAC secret: the classic attack
    # (built by hand; PyJWT itself refuses to make it).
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(
        json.dumps({"iss": CLIENT, "sub": CLIENT, "aud": AUD, "exp": 2**33, "jti": "x"}).encode()
    )
    sig = b64(hmac.new(keys[1].encode(), head + b"." + body, hashlib.sha256).digest())
    forged = (head + b"." + body + b"." + sig).decode()
    await expect_invalid_client(verify(forged, keys[1]), "'HS256' is not accepted")
    unsigned = jwt.encode({"iss": CLIENT}, cast(Any, None), algorithm="none")
    await expect_invalid_client(verify(unsigned, keys[1]), "'none' is not accepted")


async def test_expired(keys: tuple[str, str]) -> None:
    assertion = make_client_assertion(keys[0], CLIENT, AUD, T0, lifetime_seconds=60)
    later = T0 + timedelta(seconds=60)
    await expect_invalid_client(verify(assertion, keys[1], now=later), "expired")
    # A little leeway for clock skew, when asked for.
    await verify(assertion, keys[1], now=later, leeway_seconds=5)


async def test_exp_too_far_in_the_future(keys: tuple[str, str]) -> None:
    ok = make_client_assertion(keys[0], CLIENT, AUD, T0, lifetime_seconds=300)
    await verify(ok, keys[1])
    too_far = make_client_assertion(keys[0], CLIENT, AUD, T0, lifetime_seconds=301)
    await expect_invalid_client(verify(too_far, keys[1]), "at most 300 seconds")
    # ... judged from `now`, not from the assertion's own iat
    old = make_client_assertion(
        keys[0], CLIENT, AUD, T0 - timedelta(hours=1), lifetime_seconds=3601 + 300
    )
    await expect_invalid_client(verify(old, keys[1]), "at most 300 seconds")


async def test_wrong_audience(keys: tuple[str, str]) -> None:
    assertion = make_client_assertion(keys[0], CLIENT, "https://elsewhere/token", T0)
    await expect_invalid_client(verify(assertion, keys[1]), "'aud'")
    # Several accepted URLs (e.g. public and internal base URL) may be given.
    await verify(assertion, keys[1], audience=[AUD, "https://elsewhere/token"])


async def test_iss_must_equal_sub(keys: tuple[str, str]) -> None:
    assertion = signed(keys[0], sub="someone-else")
    await expect_invalid_client(verify(assertion, keys[1]), "'iss' and 'sub' must be equal")


async def test_iss_must_be_the_client(keys: tuple[str, str]) -> None:
    assertion = make_client_assertion(keys[0], "another-client", AUD, T0)
    await expect_invalid_client(verify(assertion, keys[1]), "must be the client_id")


@pytest.mark.parametrize("claim", ["exp", "jti", "aud", "iss", "sub"])
async def test_required_claims(keys: tuple[str, str], claim: str) -> None:
    assertion = signed(keys[0], drop=(claim,))
    await expect_invalid_client(verify(assertion, keys[1]), f"lacks the '{claim}' claim")


async def test_nbf_in_the_future(keys: tuple[str, str]) -> None:
    assertion = signed(keys[0], nbf=int(T0.timestamp()) + 60)
    await expect_invalid_client(verify(assertion, keys[1]), "not valid yet")


async def test_replayed_jti_with_a_set(keys: tuple[str, str]) -> None:
    seen: set[str] = set()
    a = make_client_assertion(keys[0], CLIENT, AUD, T0, jti="once")
    await verify(a, keys[1], seen_jti=seen)
    assert seen == {f"{CLIENT}:once"}
    b = make_client_assertion(keys[0], CLIENT, AUD, T0 + timedelta(seconds=5), jti="once")
    await expect_invalid_client(verify(b, keys[1], seen_jti=seen), "already used")
    c = make_client_assertion(keys[0], CLIENT, AUD, T0, jti="twice")
    await verify(c, keys[1], seen_jti=seen)


async def test_replayed_jti_with_callables(keys: tuple[str, str]) -> None:
    used: set[str] = set()

    def seen(jti: str) -> bool:
        was = jti in used
        used.add(jti)
        return was

    async def first_use(jti: str) -> bool:
        await asyncio.sleep(0)
        if jti in used:
            return False
        used.add(jti)
        return True

    a = make_client_assertion(keys[0], CLIENT, AUD, T0, jti="a")
    await verify(a, keys[1], seen_jti=seen)
    await expect_invalid_client(verify(a, keys[1], seen_jti=seen), "already used")
    b = make_client_assertion(keys[0], CLIENT, AUD, T0, jti="b")
    await verify(b, keys[1], seen_jti=None, first_use=first_use)
    await expect_invalid_client(
        verify(b, keys[1], seen_jti=None, first_use=first_use), "already used"
    )


async def test_a_rejected_assertion_does_not_use_up_its_jti(keys: tuple[str, str]) -> None:
    seen: set[str] = set()
    wrong_aud = make_client_assertion(keys[0], CLIENT, "https://x/token", T0, jti="j")
    await expect_invalid_client(verify(wrong_aud, keys[1], seen_jti=seen), "'aud'")
    assert seen == set()
    await verify(make_client_assertion(keys[0], CLIENT, AUD, T0, jti="j"), keys[1], seen_jti=seen)


async def test_replay_check_is_required(keys: tuple[str, str]) -> None:
    assertion = make_client_assertion(keys[0], CLIENT, AUD, T0)
    with pytest.raises(TypeError, match="seen_jti or first_use"):
        await verify(assertion, keys[1], seen_jti=None)


async def test_unusable_registered_key(keys: tuple[str, str]) -> None:
    assertion = make_client_assertion(keys[0], CLIENT, AUD, T0)
    await expect_invalid_client(verify(assertion, "not a pem"), "key is unusable")


async def test_garbage_assertion(keys: tuple[str, str]) -> None:
    await expect_invalid_client(verify("not-a-jwt", keys[1]), "not a well-formed JWT")


# --------------------------------------------------------------------------- token request


def test_parse_token_request_takes_client_id_from_iss(keys: tuple[str, str]) -> None:
    assertion = make_client_assertion(keys[0], CLIENT, AUD, T0)
    assert parse_token_request(form(assertion)) == (CLIENT, assertion, "")
    assert parse_token_request(form(assertion, client_id=CLIENT))[0] == CLIENT


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type", "client_credentials"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type", "authorization_code"),
        ({"grant_type": ""}, "invalid_request", "grant_type is required"),
        ({"client_assertion_type": "urn:x"}, "invalid_client", "client_assertion_type"),
        ({"client_assertion_type": ""}, "invalid_client", "missing"),
        ({"client_assertion": ""}, "invalid_client", "client_assertion is required"),
        ({"client_assertion": "garbage"}, "invalid_client", "not a well-formed JWT"),
        ({"client_id": "someone-else"}, "invalid_client", "does not match"),
    ],
)
def test_parse_token_request_errors(
    keys: tuple[str, str], fields: dict[str, str], code: str, message: str
) -> None:
    data = form(make_client_assertion(keys[0], CLIENT, AUD, T0))
    data.update(fields)
    with pytest.raises(AuthError, match=message) as err:
        parse_token_request(data)
    assert err.value.code == code


def test_parse_token_request_without_grant_type(keys: tuple[str, str]) -> None:
    data = form(make_client_assertion(keys[0], CLIENT, AUD, T0))
    del data["grant_type"]
    with pytest.raises(AuthError) as err:
        parse_token_request(data)
    assert err.value.code == "invalid_request"


def test_parse_token_request_assertion_without_iss(keys: tuple[str, str]) -> None:
    with pytest.raises(AuthError, match="no 'iss'") as err:
        parse_token_request(form(signed(keys[0], iss=None)))
    assert err.value.code == "invalid_client"
