"""The mesh PKI on disk: what ``crypto-mesh up`` and ``crypto-mesh secrets`` create, with which modes and names,
what they keep, what they renew, and how a party's files are checked before a service starts."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from crypto_mesh import pki
from launcher.cli import main as cli
from launcher.mesh import ensure_mesh_pki
from crypto_mesh.pki import (
    AGGREGATOR,
    AUTH,
    CA_CERT_FILE,
    CA_KEY_FILE,
    COMPOSE_IDENTITIES,
    EMBEDDED_IDENTITIES,
    HEALTHCHECK,
    PROFILE_BFF,
    SOCKET_PROXY,
    leaf_file_names,
    load_tls,
)
from crypto_mesh.secrets import secrets_dir


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_the_embedded_mesh_makes_a_ca_and_every_identity_readable_by_its_owner_only(tmp_path):
    files = ensure_mesh_pki(tmp_path)
    directory = tmp_path / "secrets"
    expected = {CA_CERT_FILE, CA_KEY_FILE} | {name for i in EMBEDDED_IDENTITIES for name in leaf_file_names(i)}
    assert {path.name for path in directory.iterdir()} >= expected
    assert mode_of(directory) == 0o700
    assert {name: mode_of(directory / name) for name in expected} == {name: 0o600 for name in expected}
    assert set(files) == set(EMBEDDED_IDENTITIES)
    for identity, tls_files in files.items():
        assert tls_files.load().identity == identity


def test_running_again_keeps_every_file_as_it_is(tmp_path):
    ensure_mesh_pki(tmp_path)
    before = contents(tmp_path / "secrets")
    ensure_mesh_pki(tmp_path)
    assert contents(tmp_path / "secrets") == before


def test_each_certificate_names_its_identity_and_a_server_names_its_hosts(tmp_path):
    files = ensure_mesh_pki(tmp_path)
    ca = certificate(files[AUTH].ca_file)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(
        ca=True, path_length=0
    )
    for identity in EMBEDDED_IDENTITIES:
        leaf = certificate(files[identity].cert_file)
        leaf.verify_directly_issued_by(ca)
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert leaf.public_key().curve.name == "secp256r1"
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://crypto-mesh/{identity}"]
        if identity in (AUTH, SOCKET_PROXY):
            assert names.get_values_for_type(x509.DNSName) == [identity, "localhost"]
            assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
            assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        else:
            assert names.get_values_for_type(x509.DNSName) == []
            assert usages == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_crypto_mesh_secrets_writes_the_compose_identities_and_keeps_the_ca_key_private(tmp_path):
    directory = tmp_path / "secrets"
    result = CliRunner().invoke(cli, ["secrets", str(directory)])
    assert result.exit_code == 0, result.output
    mounted = {CA_CERT_FILE} | {name for i in COMPOSE_IDENTITIES for name in leaf_file_names(i)}
    assert {name: mode_of(directory / name) for name in mounted} == {name: 0o644 for name in mounted}
    assert mode_of(directory / CA_KEY_FILE) == 0o600
    assert not any(name.startswith(HEALTHCHECK) for name in contents(directory))
    for identity in COMPOSE_IDENTITIES:
        cert_name, key_name = leaf_file_names(identity)
        assert load_tls(directory / CA_CERT_FILE, directory / cert_name, directory / key_name).identity == identity
    before = contents(directory)
    assert CliRunner().invoke(cli, ["secrets", str(directory)]).exit_code == 0
    assert contents(directory) == before


def test_a_certificate_about_to_expire_is_reissued_for_the_same_key(tmp_path):
    directory = secrets_dir(tmp_path / "secrets")
    files = pki.ensure_mesh_pki(directory, [AGGREGATOR])[AGGREGATOR]
    key = files.key_file.read_bytes()
    # Issued 340 days ago: 25 days left, fewer than the 30 days of RENEW_BEFORE.
    old = pki.leaf_certificate_pem(
        AGGREGATOR, key, files.ca_file.read_bytes(), (directory / CA_KEY_FILE).read_bytes(),
        now=datetime.now(UTC) - timedelta(days=340),
    )
    files.cert_file.write_bytes(old)
    pki.ensure_mesh_pki(directory, [AGGREGATOR])
    renewed = certificate(files.cert_file)
    assert files.cert_file.read_bytes() != old and files.key_file.read_bytes() == key
    assert renewed.not_valid_after_utc - datetime.now(UTC) > timedelta(days=360)
    assert mode_of(files.cert_file) == 0o600
    assert load_tls(files.ca_file, files.cert_file, files.key_file).identity == AGGREGATOR


def test_replacing_the_ca_key_rotates_the_ca_and_reissues_every_certificate(tmp_path):
    first = ensure_mesh_pki(tmp_path)
    directory = tmp_path / "secrets"
    old_ca = directory.joinpath(CA_CERT_FILE).read_bytes()
    keys = {identity: files.key_file.read_bytes() for identity, files in first.items()}
    (directory / CA_KEY_FILE).unlink()
    second = ensure_mesh_pki(tmp_path)
    new_ca = certificate(directory / CA_CERT_FILE)
    assert directory.joinpath(CA_CERT_FILE).read_bytes() != old_ca
    for identity, files in second.items():
        certificate(files.cert_file).verify_directly_issued_by(new_ca)
        assert files.key_file.read_bytes() == keys[identity]
        assert files.load().identity == identity


def test_deleting_a_key_rotates_that_identity_only(tmp_path):
    first = ensure_mesh_pki(tmp_path)
    before = contents(tmp_path / "secrets")
    first[PROFILE_BFF].key_file.unlink()
    ensure_mesh_pki(tmp_path)
    after = contents(tmp_path / "secrets")
    changed = {name for name in before if before[name] != after[name]}
    assert changed == set(leaf_file_names(PROFILE_BFF))
    assert first[PROFILE_BFF].load().identity == PROFILE_BFF


#: Ways to break an ``auth`` party's files: (files, the same CA's aggregator files, another CA's auth files).
BROKEN = {
    "the key of another identity": (
        lambda files, sibling, foreign: files.key_file.write_bytes(sibling.key_file.read_bytes()),
        "is not the private key of the certificate",
    ),
    "a key and certificate of another CA": (
        lambda files, sibling, foreign: (
            files.key_file.write_bytes(foreign.key_file.read_bytes()),
            files.cert_file.write_bytes(foreign.cert_file.read_bytes()),
        ),
        "was not issued by a CA of",
    ),
    "no certificate": (
        lambda files, sibling, foreign: files.cert_file.write_text("not a certificate"),
        "holds no PEM certificate",
    ),
    "no CA certificate": (lambda files, sibling, foreign: files.ca_file.write_text(""), "holds no PEM certificate"),
    "no key": (
        lambda files, sibling, foreign: files.key_file.write_text("not a key"),
        "holds no unencrypted ECDSA private key",
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_files_that_cannot_serve_are_refused_naming_the_file_and_never_showing_a_key(tmp_path, broken):
    ours = pki.ensure_mesh_pki(secrets_dir(tmp_path / "ours"), [AUTH, AGGREGATOR])
    foreign = pki.ensure_mesh_pki(secrets_dir(tmp_path / "foreign"), [AUTH])
    damage, message = BROKEN[broken]
    damage(ours[AUTH], ours[AGGREGATOR], foreign[AUTH])
    with pytest.raises(ValueError, match=message) as refused:
        ours[AUTH].load()
    assert str(tmp_path / "ours") in str(refused.value)
    assert "PRIVATE KEY" not in str(refused.value)


def test_a_certificate_outside_its_validity_is_refused(tmp_path):
    files = pki.ensure_mesh_pki(secrets_dir(tmp_path / "secrets"), [AUTH])[AUTH]
    with pytest.raises(ValueError, match="not now"):
        load_tls(files.ca_file, files.cert_file, files.key_file, now=datetime.now(UTC) + timedelta(days=400))
    with pytest.raises(ValueError, match="not now"):
        load_tls(files.ca_file, files.cert_file, files.key_file, now=datetime.now(UTC) - timedelta(days=1))


def test_a_ca_bundle_of_the_old_and_the_new_ca_accepts_certificates_of_both(tmp_path):
    old = pki.ensure_mesh_pki(secrets_dir(tmp_path / "old"), [AUTH])[AUTH]
    new = pki.ensure_mesh_pki(secrets_dir(tmp_path / "new"), [AUTH])[AUTH]
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(old.ca_file.read_bytes() + new.ca_file.read_bytes())
    for files in (old, new):
        assert load_tls(bundle, files.cert_file, files.key_file).identity == AUTH


@pytest.mark.parametrize(
    ("uri", "identity"),
    [
        ("spiffe://crypto-mesh/auth", "auth"),
        ("spiffe://crypto-mesh/profile_bff", "profile_bff"),
        ("spiffe://crypto-mesh/", None),
        ("spiffe://crypto-mesh/a/b", None),
        ("spiffe://other-mesh/auth", None),
        ("https://crypto-mesh/auth", None),
    ],
)
def test_only_a_one_segment_spiffe_id_of_the_mesh_names_an_identity(uri, identity):
    assert pki.identity_of_spiffe_id(uri) == identity
