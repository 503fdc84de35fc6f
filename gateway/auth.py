"""Access tokens, and client authentication with signed JWT assertions (RFC 7523).

ARCHITECTURE.md, provider side: ``Authorization: Bearer <token>`` for one
provider; tokens come from ``POST /auth/token`` (OAuth2 client credentials
with a signed JWT assertion, RFC 7523, as P1 and SMART Backend Services do).
DOMAIN.md Identifiers: "System-to-system auth on P1 is OAuth2 client
credentials with a signed JWT assertion (RFC 7523), the same shape as SMART
Backend Services".

Two kinds of JWT:

- *access tokens* we issue (:class:`TokenService`, HS256): ``sub`` is the
  provider id, the patient's PESEL or the payer's client id, ``kind`` says which. Their ``iat`` /
  ``exp`` follow the application :class:`~gateway.ports.Clock`, so moving the
  sandbox clock ages them; expiry is checked against that clock, not the wall.
- *client assertions* a provider signs with its private key (ES256 by
  default; ES384 and RS384 too, the algorithms SMART Backend Services names)
  and sends to the token endpoint (:func:`parse_token_request`,
  :func:`verify_client_assertion`).

Pure code: no I/O besides the caller's replay check, no adapter imports.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableSet
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)

__all__ = [
    "ASSERTION_ALGORITHMS",
    "ASSERTION_TYPE",
    "ISSUER",
    "MAX_ASSERTION_LIFETIME",
    "AuthError",
    "Principal",
    "TokenService",
    "generate_client_keypair",
    "make_client_assertion",
    "parse_token_request",
    "verify_client_assertion",
]

ISSUER = "cer-gateway"
ACCESS_TOKEN_ALGORITHM = "HS256"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE = "client_credentials"
# SMART Backend Services: ES384 and RS384 are the required ones; ES256 is our default
# (P-256 keys are small and fast).
ASSERTION_ALGORITHMS = ("ES256", "ES384", "RS384")
# SMART Backend Services: exp "SHALL be no more than five minutes in the future".
MAX_ASSERTION_LIFETIME = 300
MIN_RSA_BITS = 2048
# RFC 7518 §3.2: an HS256 key MUST have at least 256 bits.
MIN_SECRET_BYTES = 32
VERIFIED_CACHE_SIZE = 10_000  # tokens kept verified (TokenService.verify)

Kind = Literal["provider", "patient", "payer"]
# Replay check: a set of ``"<client_id>:<jti>"`` seen so far (checked and updated),
# or a callable told the jti that answers "seen before?" (sync or async).
SeenJti = MutableSet[str] | Callable[[str], bool | Awaitable[bool]]
# The opposite question, for a store with a unique index: "is this the first use?"
FirstUse = Callable[[str], bool | Awaitable[bool]]


class AuthError(Exception):
    """Authentication failed.

    ``code`` is an OAuth 2.0 error code (RFC 6749 §5.2: ``invalid_request``,
    ``invalid_client``, ``invalid_grant``, ``unsupported_grant_type``) or, for
    bearer tokens, RFC 6750's ``invalid_token``. ``message`` is safe to show the
    caller (``error_description``). ``status`` is the HTTP status to answer with.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return 401 if self.code in ("invalid_client", "invalid_token") else 400


@dataclass(frozen=True)
class Principal:
    """Who is calling: a provider (``subject`` = provider id), a patient (PESEL), or the
    payer (NFZ; ``subject`` = its client's id), who reads every provider's reports."""

    kind: Kind
    subject: str


class _Clock(Protocol):
    def now(self) -> datetime: ...


def _ts(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("naive datetime: the clock must give timezone-aware instants")
    return int(dt.timestamp())


# --------------------------------------------------------------------------- access tokens


class TokenService:
    """Issues and verifies our HS256 access tokens, timed by the application clock."""

    def __init__(self, secret: bytes, ttl_seconds: int, clock: _Clock) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"token secret must be at least {MIN_SECRET_BYTES} bytes for HS256 "
                f"(RFC 7518 §3.2), got {len(secret)}; set TOKEN_SECRET to a longer value"
            )
        if ttl_seconds <= 0:
            raise ValueError(f"token ttl must be positive, got {ttl_seconds}")
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        # Tokens already verified, with their expiry: a patient's or a vendor's client sends
        # the same token with every request, and HMAC + JSON decoding is most of the cost
        # of a cheap read. Bounded; only valid tokens are kept, expiry is checked each time.
        self._verified: dict[str, tuple[Principal, int]] = {}

    def issue(self, principal: Principal) -> str:
        """A signed token for ``principal``, valid for ``ttl_seconds`` of clock time."""
        iat = _ts(self._clock.now())
        claims = {
            "iss": ISSUER,
            "sub": principal.subject,
            "kind": principal.kind,
            "iat": iat,
            "exp": iat + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ACCESS_TOKEN_ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; ``AuthError("invalid_token", ...)`` otherwise.

        Expiry is checked against the clock (PyJWT would use the wall clock, so
        its time checks are turned off and done here).
        """
        hit = self._verified.get(token)
        if hit is not None and hit[1] > _ts(self._clock.now()):
            return hit[0]
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ACCESS_TOKEN_ALGORITHM],
                issuer=ISSUER,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "sub", "kind", "iat", "exp", "jti"],
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthError("invalid_token", "token signature is invalid") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid_token", "token was not issued by this gateway") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("invalid_token", f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AuthError("invalid_token", "token is malformed") from None
        kind, subject, exp = claims["kind"], claims["sub"], claims["exp"]
        if (
            kind not in ("provider", "patient", "payer")
            or not isinstance(subject, str)
            or not subject
        ):
            raise AuthError("invalid_token", "token is malformed")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise AuthError("invalid_token", "token is malformed")
        if exp <= _ts(self._clock.now()):
            raise AuthError("invalid_token", "token has expired")
        principal = Principal(cast(Kind, kind), subject)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, exp)
        return principal


# --------------------------------------------------------------------------- client keys


def generate_client_keypair(alg: str = "ES256") -> tuple[str, str]:
    """A new key pair for a client: ``(private PEM (PKCS#8), public PEM (SPKI))``.

    ``alg``: ``ES256`` (P-256, default), ``ES384`` (P-384) or ``RS384`` (RSA 3072).
    """
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif alg == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unsupported algorithm {alg!r}; use one of {ASSERTION_ALGORITHMS}")
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def _alg_for_key(key: PrivateKeyTypes | PublicKeyTypes) -> str | None:
    """The assertion algorithm a key is fit for (None if unfit)."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        if isinstance(key.curve, ec.SECP384R1):
            return "ES384"
        return None
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RS384" if key.key_size >= MIN_RSA_BITS else None
    return None


def make_client_assertion(
    private_key_pem: str,
    client_id: str,
    audience: str,
    now: datetime,
    alg: str | None = None,
    *,
    lifetime_seconds: int = 240,
    jti: str | None = None,
    kid: str | None = None,
) -> str:
    """A signed client assertion (RFC 7523 §3 / SMART Backend Services).

    Claims: ``iss`` = ``sub`` = ``client_id``, ``aud`` = the token endpoint URL,
    ``iat`` = ``now``, ``exp`` = ``now + lifetime_seconds`` (at most 300),
    ``jti`` random unless given. ``alg`` defaults to the one the key suits
    (ES256 for a P-256 key, ES384 for P-384, RS384 for RSA).
    """
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    key_alg = _alg_for_key(key)
    if alg is None:
        alg = key_alg
    if alg not in ASSERTION_ALGORITHMS or alg != key_alg:
        raise ValueError(f"algorithm {alg!r} does not fit this key (it suits {key_alg!r})")
    iat = _ts(now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": iat,
        "exp": iat + lifetime_seconds,
        "jti": jti or uuid.uuid4().hex,
    }
    headers: dict[str, Any] = {"typ": "JWT"}
    if kid:
        headers["kid"] = kid
    return jwt.encode(claims, cast(Any, key), algorithm=alg, headers=headers)


# --------------------------------------------------------------------------- token endpoint


def parse_token_request(form: Mapping[str, str]) -> tuple[str, str, str]:
    """``(client_id, assertion, scope)`` from a token request's form fields.

    ``grant_type`` must be ``client_credentials`` (else ``unsupported_grant_type``),
    ``client_assertion_type`` the RFC 7523 JWT bearer type and
    ``client_assertion`` present (else ``invalid_client``: no usable client
    authentication). ``client_id`` is optional (RFC 7523 §3.2); without it the
    assertion's *unverified* ``iss`` names the client, whose key then verifies
    it. ``scope`` is ``""`` when absent. Nothing here is trusted yet: call
    :func:`verify_client_assertion` next.
    """
    grant_type = form.get("grant_type")
    if not grant_type:
        raise AuthError("invalid_request", "grant_type is required")
    if grant_type != GRANT_TYPE:
        raise AuthError(
            "unsupported_grant_type", f"grant_type must be {GRANT_TYPE!r}, got {grant_type!r}"
        )
    assertion_type = form.get("client_assertion_type")
    if assertion_type != ASSERTION_TYPE:
        raise AuthError(
            "invalid_client",
            f"client_assertion_type must be {ASSERTION_TYPE!r}"
            + ("" if assertion_type else " (missing)"),
        )
    assertion = (form.get("client_assertion") or "").strip()
    if not assertion:
        raise AuthError("invalid_client", "client_assertion is required")
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise AuthError("invalid_client", "client_assertion is not a well-formed JWT") from None
    iss = unverified.get("iss")
    form_client_id = form.get("client_id")
    if not isinstance(iss, str) or not iss:
        raise AuthError("invalid_client", "client_assertion has no 'iss' claim")
    if form_client_id and form_client_id != iss:
        raise AuthError("invalid_client", "client_id does not match the assertion's issuer")
    return iss, assertion, form.get("scope") or ""


async def _maybe_await(value: bool | Awaitable[bool]) -> bool:
    if inspect.isawaitable(value):
        return bool(await value)
    return bool(value)


async def verify_client_assertion(
    assertion: str,
    *,
    client_id: str,
    public_key_pem: str,
    audience: str | Iterable[str],
    now: datetime,
    seen_jti: SeenJti | None = None,
    first_use: FirstUse | None = None,
    leeway_seconds: int = 0,
) -> dict[str, Any]:
    """Verify a client assertion (RFC 7523 §3 / SMART Backend Services); return its claims.

    Checks: the header ``alg`` is one of :data:`ASSERTION_ALGORITHMS` and fits
    the registered key; the signature; ``iss`` == ``sub`` == ``client_id``;
    ``aud`` is ``audience`` (the token endpoint URL; several accepted URLs may
    be given); ``exp`` present, after ``now`` and at most five minutes after it;
    ``nbf`` (if any) not after ``now``; ``jti`` present and not used before.
    Times are judged against ``now`` (the application clock), with
    ``leeway_seconds`` of tolerance for clock skew.

    Replay: give ``seen_jti`` (a set of ``"client_id:jti"``, updated here, or a
    callable ``jti -> already seen?``) or ``first_use`` (``jti -> first use?``,
    e.g. an insert into a unique index). Either callable may be async. The
    replay check runs last, so an assertion failing any other check does not
    use up its jti. Every failure is ``AuthError("invalid_client", ...)``
    (RFC 7523 §3.2; SMART Backend Services).
    """
    if seen_jti is None and first_use is None:
        raise TypeError("verify_client_assertion needs seen_jti or first_use (replay check)")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise AuthError("invalid_client", "client_assertion is not a well-formed JWT") from None
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise AuthError(
            "invalid_client",
            f"client_assertion algorithm {alg!r} is not accepted; use one of "
            + ", ".join(ASSERTION_ALGORITHMS),
        )
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError:
        raise AuthError("invalid_client", "the client's registered key is unusable") from None
    if _alg_for_key(key) != alg:
        raise AuthError(
            "invalid_client", f"client_assertion algorithm {alg} does not fit the client's key"
        )
    try:
        claims = jwt.decode(
            assertion,
            cast(Any, key),
            algorithms=[alg],
            audience=audience,
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["iss", "sub", "aud", "exp", "jti"],
            },
        )
    except jwt.InvalidSignatureError:
        raise AuthError(
            "invalid_client", "client_assertion signature does not verify with the client's key"
        ) from None
    except jwt.InvalidAudienceError:
        raise AuthError(
            "invalid_client", "client_assertion 'aud' must be this token endpoint's URL"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(
            "invalid_client", f"client_assertion lacks the {exc.claim!r} claim"
        ) from None
    except jwt.PyJWTError as exc:
        raise AuthError("invalid_client", f"client_assertion is invalid: {exc}") from None

    if claims["iss"] != claims["sub"]:
        raise AuthError("invalid_client", "client_assertion 'iss' and 'sub' must be equal")
    if claims["iss"] != client_id:
        raise AuthError("invalid_client", "client_assertion 'iss' must be the client_id")

    now_ts = _ts(now)
    exp = claims["exp"]
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise AuthError("invalid_client", "client_assertion 'exp' must be an integer")
    if exp <= now_ts - leeway_seconds:
        raise AuthError("invalid_client", "client_assertion has expired")
    if exp > now_ts + MAX_ASSERTION_LIFETIME + leeway_seconds:
        raise AuthError(
            "invalid_client",
            f"client_assertion 'exp' must be at most {MAX_ASSERTION_LIFETIME} seconds "
            "in the future",
        )
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int) or nbf > now_ts + leeway_seconds):
        raise AuthError("invalid_client", "client_assertion is not valid yet ('nbf')")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise AuthError("invalid_client", "client_assertion 'jti' must be a non-empty string")

    replayed = False
    if seen_jti is not None:
        if callable(seen_jti):
            replayed = await _maybe_await(seen_jti(jti))
        else:
            key_id = f"{client_id}:{jti}"
            replayed = key_id in seen_jti
            seen_jti.add(key_id)
    if not replayed and first_use is not None:
        replayed = not await _maybe_await(first_use(jti))
    if replayed:
        raise AuthError("invalid_client", "client_assertion 'jti' was already used (replay)")
    return claims
