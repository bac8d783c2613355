"""Secrets and keys come from settings or files, never from defaults in code; the embedded stack generates
the signing key once, readable by its owner only."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from aggregator.settings import AggregatorSettings
from auth.settings import AuthSettings
from auth.tokens import load_private_key
from launcher.mesh import ensure_jwt_key
from profile_bff.settings import BffSettings
from socket_proxy.settings import ProxySettings

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A PEM private key with its body; a string literal assigned to a name that says secret, password or key
#: (names of directories, files and paths, which hold no secret themselves, excepted).
_PEM_WITH_BODY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----\s+[A-Za-z0-9+/=]{40,}")
_SECRET_ASSIGNMENT = re.compile(
    r"""(?im)^\s*(?!\w*(dir|file|path)\b)\w*(secret|password|passwd|private_key|api_key)\w*\s*(:[^=\n]+)?=\s*[rbu]?["'][^"']{6,}["']\s*$"""
)
#: The mesh identity of every service that speaks gRPC: no gRPC runs without mutual TLS.
TLS_FILES = ("tls_ca_file", "tls_cert_file", "tls_key_file")


@pytest.fixture
def no_service_environment(monkeypatch):
    import os

    for variable in list(os.environ):
        if variable.startswith(("AUTH_", "BFF_", "PROXY_", "AGGREGATOR_")):
            monkeypatch.delenv(variable)


@pytest.mark.parametrize(
    ("settings_class", "secrets"),
    [
        (AuthSettings, {"database_url", "jwt_private_key_file", *TLS_FILES}),
        (BffSettings, {"database_url", "redis_url", "aggregator_token_file", "etl_token_file", *TLS_FILES}),
        (ProxySettings, set(TLS_FILES)),
        (AggregatorSettings, {"redis_url", "kafka_bootstrap_servers", "api_token_file", *TLS_FILES}),
    ],
)
def test_secret_settings_have_no_default_and_their_absence_stops_the_service(
    no_service_environment, settings_class, secrets
):
    assert {name for name in secrets if settings_class.model_fields[name].is_required()} == secrets
    with pytest.raises(ValidationError) as missing:
        settings_class()
    assert {error["loc"][0] for error in missing.value.errors()} == secrets


def test_no_source_file_carries_a_private_key_or_a_secret_literal():
    sources = [
        path
        for package in ("auth", "profile_bff", "crypto_mesh", "socket_proxy", "aggregator", "etl")
        for path in (REPO_ROOT / package).rglob("*.py")
        if "_pb2" not in path.name
    ] + [REPO_ROOT / "compose.yaml"]
    offenders = []
    for path in sources:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        if _PEM_WITH_BODY.search(text):
            offenders.append(f"{path.relative_to(REPO_ROOT)}: PEM private key")
        for match in _SECRET_ASSIGNMENT.finditer(text):
            offenders.append(f"{path.relative_to(REPO_ROOT)}: {match.group(0)[:60]}")
    assert offenders == []


def test_the_embedded_stack_generates_the_signing_key_once_for_its_owner_only(tmp_path):
    first = ensure_jwt_key(tmp_path)
    content = first.read_bytes()
    second = ensure_jwt_key(tmp_path)
    assert second == first and second.read_bytes() == content
    assert isinstance(load_private_key(first), Ed25519PrivateKey)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
    assert ensure_jwt_key(tmp_path / "another").read_bytes() != content
