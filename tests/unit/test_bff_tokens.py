"""Local verification of access tokens by the BFF: EdDSA only, published keys only, iss/aud/exp enforced."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto_mesh import jsonutil
from profile_bff.tokens import AccessTokenVerifier, InvalidToken, KeysUnavailable

ISSUER, AUDIENCE = "crypto-mesh-auth", "crypto-mesh"


class KeyServer:
    """Stands in for auth.GetPublicKeys: publishes the JWK Set of its keys and counts the fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PrivateKey] = {}
        self.fetches = 0
        self.down = False

    def add_key(self, kid: str) -> Ed25519PrivateKey:
        self.keys[kid] = Ed25519PrivateKey.generate()
        return self.keys[kid]

    async def jwks_json(self) -> str:
        self.fetches += 1
        if self.down:
            raise ConnectionError("auth is down")
        jwks = []
        for kid, key in self.keys.items():
            raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            jwks.append({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
        return jsonutil.dumps_str({"keys": jwks})


def sign(key, kid: str, **overrides) -> str:
    now = int(time.time())
    claims = {"sub": "42", "name": "alice", "iat": now, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE}
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


@pytest.fixture
def keys() -> KeyServer:
    return KeyServer()


def verifier(keys: KeyServer, refetch_interval_s: float = 60.0) -> AccessTokenVerifier:
    return AccessTokenVerifier(
        keys.jwks_json, issuer=ISSUER, audience=AUDIENCE, refetch_interval_s=refetch_interval_s
    )


async def test_a_token_signed_by_a_published_key_gives_its_user(keys):
    key = keys.add_key("k1")
    claims = await verifier(keys).verify(sign(key, "k1"))
    assert (claims.user_id, claims.name) == (42, "alice")


async def test_keys_are_cached_between_verifications(keys):
    key = keys.add_key("k1")
    checker = verifier(keys)
    for _ in range(5):
        await checker.verify(sign(key, "k1"))
    assert keys.fetches == 1


async def test_a_rotated_key_is_fetched_once_on_its_first_unknown_kid(keys):
    checker = verifier(keys, refetch_interval_s=0.0)
    await checker.verify(sign(keys.add_key("k1"), "k1"))
    new_key = keys.add_key("k2")
    assert (await checker.verify(sign(new_key, "k2"))).user_id == 42
    assert keys.fetches == 2


async def test_unknown_kids_refetch_at_most_once_per_interval(keys):
    checker = verifier(keys, refetch_interval_s=60.0)
    await checker.verify(sign(keys.add_key("k1"), "k1"))
    stranger = Ed25519PrivateKey.generate()
    for n in range(10):
        with pytest.raises(InvalidToken):
            await checker.verify(sign(stranger, f"forged-{n}"))
    assert keys.fetches == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 120},
        {"iss": "someone-else"},
        {"aud": "another-service"},
        {"exp": None},
        {"iss": None},
        {"aud": None},
        {"sub": "not-a-number"},
        {"sub": None},
    ],
)
async def test_tokens_with_wrong_or_missing_claims_are_refused(keys, overrides):
    key = keys.add_key("k1")
    with pytest.raises(InvalidToken):
        await verifier(keys).verify(sign(key, "k1", **overrides))


async def test_a_token_signed_by_another_key_under_a_published_kid_is_refused(keys):
    keys.add_key("k1")
    with pytest.raises(InvalidToken):
        await verifier(keys).verify(sign(Ed25519PrivateKey.generate(), "k1"))


async def test_a_tampered_payload_is_refused(keys):
    token = sign(keys.add_key("k1"), "k1")
    header, payload, signature = token.split(".")
    claims = jsonutil.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "1"
    forged = base64.urlsafe_b64encode(jsonutil.dumps(claims)).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        await verifier(keys).verify(f"{header}.{forged}.{signature}")


async def test_hmac_and_unsigned_tokens_are_refused_whatever_their_kid(keys):
    keys.add_key("k1")
    checker = verifier(keys)
    claims = {"sub": "42", "name": "a", "exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE}
    hmac_token = jwt.encode(claims, "k1" * 16, algorithm="HS256", headers={"kid": "k1"})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    for token in (hmac_token, unsigned, "garbage", "", "a.b.c"):
        with pytest.raises(InvalidToken):
            await checker.verify(token)


async def test_no_keys_and_auth_down_is_unavailable_not_unauthenticated(keys):
    key = keys.add_key("k1")
    keys.down = True
    with pytest.raises(KeysUnavailable):
        await verifier(keys).verify(sign(key, "k1"))


async def test_cached_keys_keep_working_while_auth_is_down(keys):
    key = keys.add_key("k1")
    checker = verifier(keys, refetch_interval_s=0.0)
    await checker.verify(sign(key, "k1"))
    keys.down = True
    assert (await checker.verify(sign(key, "k1"))).user_id == 42


class Clock:
    """A wall clock (Unix s) the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_a_remembered_token_is_refused_once_it_expires(keys):
    clock = Clock()
    checker = AccessTokenVerifier(keys.jwks_json, issuer=ISSUER, audience=AUDIENCE, wall_s=clock)
    token = sign(keys.add_key("k1"), "k1", exp=int(clock.now) + 60)
    assert (await checker.verify(token)).user_id == 42
    clock.now += 60
    with pytest.raises(InvalidToken, match="expired"):
        await checker.verify(token)
    assert (await checker.verify(token, allow_expired=True)).user_id == 42


async def test_an_expired_token_let_through_for_a_refresh_is_still_refused_elsewhere(keys):
    token = sign(keys.add_key("k1"), "k1", exp=int(time.time()) - 120)
    checker = verifier(keys)
    assert (await checker.verify(token, allow_expired=True)).user_id == 42
    with pytest.raises(InvalidToken, match="expired"):
        await checker.verify(token)


async def test_tokens_of_a_key_withdrawn_from_the_set_are_refused_once_the_set_is_fetched_again(keys):
    checker = verifier(keys, refetch_interval_s=0.0)
    old_token = sign(keys.add_key("k1"), "k1")
    assert (await checker.verify(old_token)).user_id == 42
    del keys.keys["k1"]
    new_token = sign(keys.add_key("k2"), "k2")
    assert (await checker.verify(new_token)).user_id == 42  # fetches the set without k1
    with pytest.raises(InvalidToken):
        await checker.verify(old_token)


async def test_a_refused_token_is_refused_every_time(keys):
    keys.add_key("k1")
    checker = verifier(keys)
    forged = sign(Ed25519PrivateKey.generate(), "k1")
    for _ in range(3):
        with pytest.raises(InvalidToken):
            await checker.verify(forged)
