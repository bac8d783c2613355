"""Access-token signing and verification, key publication, and name/password rules: no server needed."""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth import passwords
from auth.errors import InvalidArgument, Unauthenticated
from auth.tokens import (
    TokenIssuer,
    generate_private_key_pem,
    jwk_thumbprint,
    load_private_key,
    load_public_keys,
    new_refresh_token,
    refresh_token_digest,
)
from crypto_mesh import jsonutil

ISSUER, AUDIENCE = "crypto-mesh-auth", "crypto-mesh"


def make_issuer(key: Ed25519PrivateKey | None = None, **kwargs) -> TokenIssuer:
    key = key or Ed25519PrivateKey.generate()
    return TokenIssuer(key, issuer=ISSUER, audience=AUDIENCE, ttl_s=900, **kwargs)


def test_jwk_thumbprint_matches_rfc_8037_appendix_a3():
    assert jwk_thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo") == (
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    )


def test_generated_private_key_is_pkcs8_pem_ed25519(tmp_path):
    pem = generate_private_key_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    assert isinstance(load_private_key(path), Ed25519PrivateKey)
    assert generate_private_key_pem() != pem


def test_a_non_ed25519_key_file_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        load_private_key(path)


def test_access_token_carries_the_contract_claims_and_kid():
    issuer = make_issuer()
    token, expires_at = issuer.issue(42, "alice", now=1_700_000_000)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "EdDSA" and header["kid"] == issuer.kid
    assert claims["sub"] == "42" and claims["name"] == "alice"
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["iat"] == 1_700_000_000 and claims["exp"] == expires_at == 1_700_000_900
    assert len(claims["jti"]) == 32


def test_jwks_publishes_current_then_retired_keys_with_their_thumbprints():
    retired = Ed25519PrivateKey.generate()
    issuer = make_issuer(retired_keys=[retired.public_key()])
    keys = jsonutil.loads(issuer.jwks_json())["keys"]
    assert len(keys) == 2
    assert keys[0]["kid"] == issuer.kid
    for key in keys:
        assert {k: key[k] for k in ("kty", "crv", "alg", "use")} == {
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
        }
        assert key["kid"] == jwk_thumbprint(key["x"])


def test_token_of_a_retired_key_still_verifies():
    retired = Ed25519PrivateKey.generate()
    old_issuer = make_issuer(retired)
    token, _ = old_issuer.issue(7, "bob", now=int(time.time()))
    new_issuer = make_issuer(retired_keys=[retired.public_key()])
    assert new_issuer.verify(token).user_id == 7
    with pytest.raises(Unauthenticated):
        make_issuer().verify(token)


def test_retired_keys_file_holds_concatenated_pem_public_keys(tmp_path):
    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(2)]
    path = tmp_path / "retired.pem"
    path.write_bytes(
        b"".join(
            k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            for k in keys
        )
    )
    loaded = load_public_keys(path)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert [k.public_bytes(*raw) for k in loaded] == [k.public_bytes(*raw) for k in keys]


def _forge(claims: dict, key, algorithm: str, kid: str) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


def _hs256(claims: dict, secret: bytes, kid: str) -> str:
    """An HS256 token keyed with ``secret``, built by hand (PyJWT rightly refuses a PEM key as HMAC secret):
    the algorithm-confusion attack on verifiers that let the token choose its algorithm."""
    b64 = jwt.utils.base64url_encode
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = b64(jsonutil.dumps(header)) + b"." + b64(jsonutil.dumps(claims))
    return (signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()


def test_verify_refuses_forged_expired_and_foreign_tokens():
    key = Ed25519PrivateKey.generate()
    issuer = make_issuer(key)
    now = int(time.time())
    good = {"sub": "1", "name": "a", "iat": now, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE, "jti": "j"}
    header, _payload, signature = issuer.issue(1, "a", now)[0].split(".")
    tampered_payload = jwt.utils.base64url_encode(jsonutil.dumps({**good, "sub": "2"})).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = {
        "alg none": _forge(good, None, "none", issuer.kid),
        "tampered": f"{header}.{tampered_payload}.{signature}",
        "other key, same kid": _forge(good, Ed25519PrivateKey.generate(), "EdDSA", issuer.kid),
        "hs256 with the public key": _hs256(good, public_pem, issuer.kid),
        "expired": _forge({**good, "iat": now - 120, "exp": now - 60}, key, "EdDSA", issuer.kid),
        "wrong audience": _forge({**good, "aud": "elsewhere"}, key, "EdDSA", issuer.kid),
        "wrong issuer": _forge({**good, "iss": "elsewhere"}, key, "EdDSA", issuer.kid),
        "no jti": _forge({k: v for k, v in good.items() if k != "jti"}, key, "EdDSA", issuer.kid),
        "non-numeric sub": _forge({**good, "sub": "admin"}, key, "EdDSA", issuer.kid),
        "no kid": jwt.encode(good, key, algorithm="EdDSA"),
        "garbage": "not.a.jwt",
    }
    assert issuer.verify(_forge(good, key, "EdDSA", issuer.kid)).user_id == 1
    for label, token in forged.items():
        with pytest.raises(Unauthenticated):
            issuer.verify(token)
            pytest.fail(f"{label} token was accepted")


def test_refresh_tokens_are_256_random_bits_stored_as_sha256():
    token, digest = new_refresh_token()
    assert len(token) == 43 and len(digest) == 32
    assert refresh_token_digest(token) == digest
    assert new_refresh_token()[0] != token


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        ("  Alice.B-2_ ", "Alice.B-2_"),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),
        ("a" * 32, "a" * 32),
    ],
)
def test_names_are_nfkc_normalised_and_stripped(raw, expected):
    assert passwords.normalize_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "ab", "a" * 33, "al ice", "élise", "bob@home", "a\u200bbc"])
def test_names_outside_the_rules_are_invalid(raw):
    with pytest.raises(InvalidArgument):
        passwords.normalize_name(raw)


def test_name_key_ignores_case():
    assert passwords.name_key("Alice") == passwords.name_key("ALICE") == "alice"


def test_password_rules_count_characters_and_utf8_bytes():
    assert passwords.normalize_password("é" * 8) == ("é" * 8).encode()  # 8 characters, 16 bytes
    assert passwords.normalize_password("x" * 72) == b"x" * 72
    with pytest.raises(InvalidArgument, match="72 bytes"):
        passwords.normalize_password("é" * 36 + "x")  # 37 characters, 73 bytes
    with pytest.raises(InvalidArgument, match="at least 8"):
        passwords.normalize_password("1234567")
    with pytest.raises(InvalidArgument, match="required"):
        passwords.normalize_password("")


def test_composed_and_decomposed_accents_are_the_same_password():
    assert passwords.normalize_password("caf\u00e9-latte") == passwords.normalize_password("cafe\u0301-latte")
