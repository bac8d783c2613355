"""Local verification of access tokens with the public keys the auth service publishes.

An access token is a JWT (RFC 7519) signed with Ed25519 (``alg: EdDSA``, RFC 8037) whose header ``kid``
names one key of the auth service's JWK Set (RFC 7517, ``auth.GetPublicKeys``). The BFF holds no signing
key: it only verifies. Keys are cached; a token with an unknown ``kid`` (the auth service rotated its key)
triggers one refetch, at most once per ``refetch_interval_s``, so a flood of forged ``kid`` values cannot turn
into a flood of calls to auth.

Key rotation (auth restarted with a new key, the old public key in ``AUTH_JWT_RETIRED_PUBLIC_KEYS_FILE``) logs
nobody out: tokens of the old key verify with the cached key, and the first token of the new key fetches the
new set, unless a fetch happened less than ``refetch_interval_s`` before; only then is it refused, for at most
that long. Hence the short default: one cheap ``GetPublicKeys`` a second is no load for auth.

Verified tokens are remembered (``verified_cache_size`` of them, least recently used dropped first), since a
client presents the same access token on every request until it expires: checking its Ed25519 signature and
parsing it took about a sixth of the BFF's CPU for a ``GET /v2/user/profile`` (benchmarks/bench_bff.py).
What is remembered is what never changes for a given token: that its signature verified under the published
key of its ``kid``, its issuer, audience and claims; ``exp`` is checked against the clock on every use. The
memory is cleared whenever the key set is fetched again, so a key withdrawn from the set stops verifying
tokens at once, as it did before. Only successes are remembered: a refused token is checked again each time.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt

from crypto_mesh.logs import get_logger

log = get_logger(__name__)

ALGORITHMS = ["EdDSA"]
#: Claims without which a token is refused (auth issues all of them).
REQUIRED_CLAIMS = ["sub", "name", "exp", "iss", "aud"]
#: Longer "tokens" are not ours; refusing them early keeps parsing cheap.
MAX_TOKEN_CHARS = 4096
#: Seconds between two fetches of the JWK Set caused by unknown ``kid`` values (see the module docstring).
DEFAULT_REFETCH_INTERVAL_S = 1.0
#: Verified tokens remembered per verifier (module docstring): more than the users one process serves at once
#: (docs/CAPACITY.md: up to 10,000 sockets a process), since a cache smaller than the set of tokens presented in
#: turn misses on every request (an Ed25519 check is ~115 µs of CPU, the rest of a profile read ~200 µs). At
#: about 650 bytes each (the token's text, its claims, the cache's entry), some 10 MiB at most.
DEFAULT_VERIFIED_CACHE_SIZE = 16_384
#: ``sub``: the user id as a positive decimal that fits PostgreSQL's bigint.
_USER_ID = re.compile(r"[1-9][0-9]{0,17}")


class InvalidToken(Exception):
    """The token is malformed, expired, for another issuer or audience, or not signed by a published key."""


class KeysUnavailable(Exception):
    """No public key is known yet and the auth service cannot be reached to fetch them."""


class _UnknownKey(Exception):
    """The token's ``kid`` names no key of the cached set (the set may need fetching again)."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says: ``user_id`` (``sub``), ``name``, ``expires_at`` (Unix seconds)."""

    user_id: int
    name: str
    expires_at: int


class AccessTokenVerifier:
    """Verifies access tokens against a cached JWK Set.

    ``fetch_jwks`` returns the JWK Set JSON (``{"keys": [...]}``) and may raise anything when auth is down.
    ``issuer`` and ``audience`` are the required ``iss`` and ``aud``. ``refetch_interval_s`` bounds how often
    the keys are fetched again (seconds, monotonic clock). ``verified_cache_size`` is how many verified tokens
    are remembered (module docstring; 0: none), ``wall_s`` the clock ``exp`` is compared with (Unix s).
    """

    def __init__(
        self,
        fetch_jwks: Callable[[], Awaitable[str]],
        *,
        issuer: str,
        audience: str,
        refetch_interval_s: float = DEFAULT_REFETCH_INTERVAL_S,
        verified_cache_size: int = DEFAULT_VERIFIED_CACHE_SIZE,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        self._fetch_jwks = fetch_jwks
        self._issuer = issuer
        self._audience = audience
        self._refetch_interval_s = refetch_interval_s
        self._wall_s = wall_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch = -math.inf
        self._lock = asyncio.Lock()
        # Exceptions are not cached by lru_cache: only tokens that verified are remembered.
        self._verified = functools.lru_cache(maxsize=verified_cache_size)(self._verify_signed)

    async def verify(self, token: str, *, allow_expired: bool = False) -> AccessClaims:
        """The claims of ``token`` once its signature, algorithm, ``iss``, ``aud`` and ``exp`` check out.

        ``allow_expired`` accepts a token past its ``exp`` (which must still be present): it still proves who
        the caller was, which is all a refresh needs to check that the session it renews is the caller's.
        Raises :class:`InvalidToken`, or :class:`KeysUnavailable` when no key has ever been fetched and auth
        is unreachable (the caller answers 503, not 401: the token may well be valid).
        """
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("access token is missing or too long")
        try:
            claims = self._verified(token)
        except _UnknownKey:
            await self._refetch()
            try:
                claims = self._verified(token)
            except _UnknownKey:
                raise InvalidToken("access token is not signed by a known key") from None
        # As PyJWT's own check: a token is expired from its exp second on (no leeway).
        if not allow_expired and claims.expires_at <= self._wall_s():
            raise InvalidToken("access token has expired")
        return claims

    def _verify_signed(self, token: str) -> AccessClaims:
        """The claims of ``token`` if its signature (by the cached key of its ``kid``), algorithm, ``iss``,
        ``aud`` and claims check out, whatever its ``exp``; raises :class:`InvalidToken`, or
        :class:`_UnknownKey` when its ``kid`` is not in the cached set."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("access token is malformed") from None
        kid = header.get("kid")
        if header.get("alg") not in ALGORITHMS or not isinstance(kid, str):
            raise InvalidToken("access token is not an EdDSA token with a kid")
        key = self._keys.get(kid)
        if key is None:
            raise _UnknownKey(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                issuer=self._issuer,
                audience=self._audience,
                options={"require": REQUIRED_CLAIMS, "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise InvalidToken("access token is invalid") from None
        sub, name, exp = claims["sub"], claims["name"], claims["exp"]
        if not (isinstance(sub, str) and _USER_ID.fullmatch(sub) and isinstance(name, str)):
            raise InvalidToken("access token is invalid")
        try:
            expires_at = int(exp)
        except (TypeError, ValueError, OverflowError):
            raise InvalidToken("access token is invalid") from None
        return AccessClaims(user_id=int(sub), name=name, expires_at=expires_at)

    async def _refetch(self) -> None:
        async with self._lock:
            if time.monotonic() - self._last_fetch < self._refetch_interval_s:
                if not self._keys:
                    raise KeysUnavailable("the auth service's public keys are not available yet")
                return
            self._last_fetch = time.monotonic()
            try:
                keys = _parse_jwks(await self._fetch_jwks())
            except Exception as exc:
                log.warning("jwks_fetch_failed", error=repr(exc), cached_keys=len(self._keys))
                if not self._keys:
                    raise KeysUnavailable("the auth service's public keys are not available") from exc
                return
            self._keys = keys
            # What was verified under the old set is checked again under the new one.
            self._verified.cache_clear()
            log.info("jwks_fetched", kids=sorted(keys))


def _parse_jwks(jwks_json: str) -> dict[str, jwt.PyJWK]:
    """``kid`` → key of the EdDSA signing keys in a JWK Set; ``jwt.PyJWKSetError`` if there is none."""
    keys = {
        key.key_id: key
        for key in jwt.PyJWKSet.from_json(jwks_json).keys
        if key.key_id
        and key.key_type == "OKP"
        and key.algorithm_name in ALGORITHMS
        and key.public_key_use in (None, "sig")
    }
    if not keys:
        raise jwt.PyJWKSetError("the JWK Set holds no EdDSA signing key with a kid")
    return keys
