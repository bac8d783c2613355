"""Access tokens (EdDSA-signed JWTs), their public keys, and opaque refresh tokens.

- Access token: a JWT (RFC 7519) signed with Ed25519 (``alg: EdDSA``, RFC 8037), header ``kid`` = the RFC 7638
  JWK thumbprint of the signing key's public half; claims ``sub`` (user id as a decimal string), ``name``,
  ``iat``, ``exp`` (Unix seconds), ``iss``, ``aud``, ``jti`` (random, hex).
- Public keys: an RFC 7517 JWK Set of the current key and of any retired keys still being published, each
  ``{"kty": "OKP", "crv": "Ed25519", "x", "kid", "alg": "EdDSA", "use": "sig"}``.
- Login-device token: a JWT as the access token (same key, same claims) whose ``aud`` is the access tokens'
  audience + ``/login-device`` (:func:`crypto_mesh.throttle.device_audience`), so neither is ever accepted as
  the other, plus ``pwv``, the version of the password it was earned with (:func:`password_version`), so that
  changing the password withdraws the trust of every device that logged in before. Issued at each successful
  login; it only marks the client as one that logged in to that user before, for the login budgets
  (:mod:`crypto_mesh.throttle`), and proves nothing else.
- Refresh token: ``secrets.token_urlsafe(32)`` (256 random bits, base64url, 43 characters). Only its SHA-256
  digest is stored.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auth.errors import Unauthenticated
from crypto_mesh import jsonutil
from crypto_mesh.throttle import device_audience

ALGORITHM = "EdDSA"
#: Claims every access token carries; a token without one of them is refused.
REQUIRED_CLAIMS = ("sub", "name", "iat", "exp", "iss", "aud", "jti")
#: Refresh tokens are 43 characters; anything much longer is not one of ours and is not worth hashing.
REFRESH_TOKEN_MAX_CHARS = 128

#: A user id as ``sub`` carries it: a positive decimal that fits PostgreSQL's bigint.
_USER_ID_RE = re.compile(r"[1-9][0-9]{0,17}")
_PEM_PUBLIC_KEY_RE = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def generate_private_key_pem() -> bytes:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``).

    The mesh launcher writes it once to its data directory and points ``AUTH_JWT_PRIVATE_KEY_FILE`` at it.
    """
    return Ed25519PrivateKey.generate().private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The JWK (RFC 8037 §2) of ``public_key`` with its ``kid``, ``alg`` and ``use``."""
    x = _b64url(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": jwk_thumbprint(x), "alg": ALGORITHM, "use": "sig"}


def jwk_thumbprint(x: str) -> str:
    """RFC 7638 thumbprint of the Ed25519 JWK with public value ``x``: base64url(SHA-256) of its required
    members ``crv``, ``kty``, ``x`` in lexicographic order, JSON without whitespace."""
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode("ascii")
    return _b64url(hashlib.sha256(canonical).digest())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``.

    Raises ``OSError`` if the file cannot be read, ``ValueError`` if it holds no Ed25519 private key.
    """
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """The Ed25519 public keys in ``path``: concatenated ``-----BEGIN PUBLIC KEY-----`` PEM blocks.

    Raises ``OSError`` if the file cannot be read, ``ValueError`` if a block is not an Ed25519 public key.
    """
    keys = []
    for block in _PEM_PUBLIC_KEY_RE.findall(path.read_bytes()):
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
        keys.append(key)
    return keys


@dataclass(frozen=True)
class AccessClaims:
    """The verified claims of an access token that the use cases need."""

    user_id: int
    name: str
    expires_at: int


@dataclass(frozen=True)
class DeviceClaims:
    """The verified claims of a login-device token."""

    user_id: int
    password_version: str


def password_version(password_hash: str) -> str:
    """A short fingerprint of a stored password hash (16 hex characters of its SHA-256): it changes whenever the
    hash does, and tells nothing of the password (the hash it digests is salted bcrypt)."""
    return hashlib.sha256(password_hash.encode("ascii")).hexdigest()[:16]


class TokenIssuer:
    """Signs access tokens with the current key and verifies them against every published key.

    ``retired_keys`` are public keys of earlier signing keys: still published and accepted, never used to
    sign. ``ttl_s`` is the access-token lifetime in seconds, ``device_ttl_s`` the login-device token's.
    """

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        *,
        issuer: str,
        audience: str,
        ttl_s: int,
        device_ttl_s: int = 7_776_000,
        retired_keys: Sequence[Ed25519PublicKey] = (),
    ) -> None:
        self._private_key = private_key
        self._issuer = issuer
        self._audience = audience
        self._device_audience = device_audience(audience)
        self._ttl_s = ttl_s
        self._device_ttl_s = device_ttl_s
        current = public_jwk(private_key.public_key())
        self._kid = current["kid"]
        self._jwks = [current]
        self._verifying_keys: dict[str, Ed25519PublicKey] = {self._kid: private_key.public_key()}
        for key in retired_keys:
            jwk = public_jwk(key)
            if jwk["kid"] not in self._verifying_keys:
                self._jwks.append(jwk)
                self._verifying_keys[jwk["kid"]] = key

    @property
    def kid(self) -> str:
        """The ``kid`` of the current signing key."""
        return self._kid

    def jwks_json(self) -> str:
        """The JWK Set (RFC 7517 §5), current key first, as compact JSON."""
        return jsonutil.dumps_str({"keys": self._jwks})

    def issue(self, user_id: int, name: str, now: int) -> tuple[str, int]:
        """A signed access token for the user and its expiry; ``now`` and the expiry are Unix seconds."""
        return self._sign(user_id, name, now, now + self._ttl_s, self._audience)

    def issue_device(self, user_id: int, name: str, password_hash: str, now: int) -> tuple[str, int]:
        """A signed login-device token for the user, earned with the password whose stored hash is
        ``password_hash``, and its expiry (Unix seconds)."""
        return self._sign(
            user_id,
            name,
            now,
            now + self._device_ttl_s,
            self._device_audience,
            pwv=password_version(password_hash),
        )

    def _sign(
        self, user_id: int, name: str, now: int, expires_at: int, audience: str, **extra: str
    ) -> tuple[str, int]:
        claims = {
            **extra,
            "sub": str(user_id),
            "name": name,
            "iat": now,
            "exp": expires_at,
            "iss": self._issuer,
            "aud": audience,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self._kid})
        return token, expires_at

    def verify(self, token: str) -> AccessClaims:
        """The claims of ``token`` once its signature, ``alg``, ``kid``, ``iss``, ``aud``, ``exp`` check out.

        The algorithm is pinned to EdDSA (``alg: none`` and HMAC confusions are refused) and the key is
        chosen by ``kid`` among the published keys only. Raises :class:`~auth.errors.Unauthenticated`.
        """
        claims = self._verify(token, self._audience, "access token")
        return AccessClaims(user_id=int(claims["sub"]), name=claims["name"], expires_at=int(claims["exp"]))

    def verify_device(self, token: str) -> DeviceClaims:
        """The claims of a login-device token, checked as :meth:`verify` does with the device audience, and
        ``pwv`` required. Raises :class:`~auth.errors.Unauthenticated`."""
        claims = self._verify(token, self._device_audience, "device token", required=("pwv",))
        if not isinstance(claims["pwv"], str):
            raise Unauthenticated("device token is invalid")
        return DeviceClaims(user_id=int(claims["sub"]), password_version=claims["pwv"])

    def _verify(self, token: str, audience: str, kind: str, required: tuple[str, ...] = ()) -> Mapping:
        try:
            header = jwt.get_unverified_header(token)
            key = self._verifying_keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
            if key is None:
                raise Unauthenticated(f"{kind} is not signed by a known key")
            claims: Mapping = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self._issuer,
                options={"require": [*REQUIRED_CLAIMS, *required]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"{kind} has expired") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated(f"{kind} is invalid") from None
        sub, name = claims["sub"], claims["name"]
        if not (isinstance(sub, str) and _USER_ID_RE.fullmatch(sub) and isinstance(name, str)):
            raise Unauthenticated(f"{kind} is invalid")
        return claims


def new_refresh_token() -> tuple[str, bytes]:
    """A fresh refresh token and the digest to store for it (see :func:`refresh_token_digest`)."""
    token = secrets.token_urlsafe(32)
    return token, refresh_token_digest(token)


def refresh_token_digest(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes (32 bytes): how a refresh token is stored and looked up.

    A plain hash suffices: the token carries 256 random bits, so the digest cannot be reversed by guessing.
    """
    return hashlib.sha256(token.encode("utf-8")).digest()
