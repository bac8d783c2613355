"""The mesh's own certificate authority and the certificate of each identity that speaks gRPC in the mesh.

Every gRPC connection inside the mesh is mutual TLS (:mod:`crypto_mesh.grpc_tls`): both ends present a
certificate issued by the mesh CA, and each end checks the other's identity.

- Keys: ECDSA P-256 (the curve every TLS 1.3 stack, BoringSSL in gRPC included, signs and verifies), stored as
  unencrypted PKCS#8 PEM, which is what gRPC reads.
- CA certificate (``mesh_ca.crt``, key ``mesh_ca.key``): self-signed, ``CN=crypto-mesh CA``, CA:TRUE with
  path length 0 (it issues leaves only), key usage keyCertSign and cRLSign, valid :data:`CA_VALIDITY`.
- Leaf certificate of an identity (``<identity>_tls.crt``, key ``<identity>_tls.key``): ``CN=<identity>``;
  the identity itself is the SPIFFE ID in its one URI SAN, ``spiffe://crypto-mesh/<identity>`` (SPIFFE
  X.509-SVID: https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md), which gRPC reports as the
  peer's ``peer_spiffe_id``. A server's certificate (:data:`SERVERS`) also names its hosts as DNS SANs (the
  identity, which is its compose host name, and ``localhost``) and IP SAN 127.0.0.1, with extended key
  usages serverAuth and clientAuth; any other identity's has clientAuth only. Valid :data:`LEAF_VALIDITY`.

Files are made through :mod:`crypto_mesh.secrets`: a key is created once and kept; a leaf certificate is
re-issued (for the same key) only when it would no longer be accepted, or soon would not: another CA, other
names, another key, or fewer than :data:`RENEW_BEFORE` left. Deleting a key file and running
``crypto-mesh up`` or ``crypto-mesh secrets`` again therefore rotates that key (docs/SECURITY.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto_mesh.secrets import OWNER_ONLY, ensure_secret, replace_secret

#: SPIFFE trust domain of the mesh: every identity is ``spiffe://crypto-mesh/<name>``.
TRUST_DOMAIN = "crypto-mesh"

#: The identities of the mesh's gRPC parties, named like their services (and their compose host names).
AUTH = "auth"
SOCKET_PROXY = "socket_proxy"
PROFILE_BFF = "profile_bff"
AGGREGATOR = "aggregator"
#: The readiness watcher of ``crypto-mesh up``: may ask a server's ``grpc.health.v1.Health`` and nothing else.
HEALTHCHECK = "healthcheck"

#: Identities that serve gRPC: their certificates name their hosts and allow serverAuth.
SERVERS = frozenset({AUTH, SOCKET_PROXY})
#: Every identity a compose deployment needs (``crypto-mesh secrets``); compose health checks run inside each
#: server's container and present that server's own certificate.
COMPOSE_IDENTITIES = (AUTH, SOCKET_PROXY, PROFILE_BFF, AGGREGATOR)
#: Every identity the embedded mesh needs (``crypto-mesh up``).
EMBEDDED_IDENTITIES = (*COMPOSE_IDENTITIES, HEALTHCHECK)

CA_CERT_FILE = "mesh_ca.crt"
CA_KEY_FILE = "mesh_ca.key"
CA_COMMON_NAME = "crypto-mesh CA"

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
#: A leaf certificate with less validity than this left is re-issued by the next ``up`` or ``secrets``.
RENEW_BEFORE = timedelta(days=30)
#: Certificates start this much before they are made, so that a peer whose clock is a little behind accepts
#: them.
CLOCK_SKEW = timedelta(minutes=5)

_SERVER_DNS_NAMES = ("localhost",)
_SERVER_IP_ADDRESSES = (ipaddress.ip_address("127.0.0.1"),)


def spiffe_id(identity: str) -> str:
    """``spiffe://crypto-mesh/<identity>``."""
    return f"spiffe://{TRUST_DOMAIN}/{identity}"


def identity_of_spiffe_id(uri: str) -> str | None:
    """The identity named by a SPIFFE ID of the mesh's trust domain (``spiffe://crypto-mesh/auth`` →
    ``auth``), or None for any other URI (another trust domain, a path of several segments, an empty name)."""
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    if not uri.startswith(prefix):
        return None
    name = uri[len(prefix):]
    return name if name and "/" not in name else None


def leaf_file_names(identity: str) -> tuple[str, str]:
    """File names of an identity's certificate and key: ``<identity>_tls.crt``, ``<identity>_tls.key``."""
    return f"{identity}_tls.crt", f"{identity}_tls.key"


@dataclass(frozen=True)
class TlsFiles:
    """Where one party finds its TLS material: the CA bundle it trusts, its certificate and its private key
    (PEM files)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def settings(self) -> dict[str, Path]:
        """The three files as the settings of :class:`crypto_mesh.settings.MeshTlsSettings`
        (``tls_ca_file``, ``tls_cert_file``, ``tls_key_file``)."""
        return {"tls_ca_file": self.ca_file, "tls_cert_file": self.cert_file, "tls_key_file": self.key_file}

    def environment(self, prefix: str) -> dict[str, str]:
        """The same as environment variables of the service whose prefix is ``prefix`` (``AUTH_`` gives
        ``AUTH_TLS_CA_FILE``, ``AUTH_TLS_CERT_FILE``, ``AUTH_TLS_KEY_FILE``)."""
        return {f"{prefix}{name.upper()}": str(path) for name, path in self.settings().items()}

    def load(self) -> MeshTls:
        """:func:`load_tls` of these files."""
        return load_tls(self.ca_file, self.cert_file, self.key_file)


@dataclass(frozen=True)
class MeshTls:
    """One party's TLS material, checked and ready for gRPC's credentials: PEM bytes of the trusted CA
    certificates (one or more, concatenated), of its own certificate and of its private key, and the identity
    its certificate proves."""

    root_certificates: bytes
    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    identity: str


def generate_key_pem() -> bytes:
    """A new ECDSA P-256 private key as unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``)."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"not an ECDSA private key but a {type(key).__name__}")
    return key


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def ca_certificate_pem(ca_key_pem: bytes, now: datetime | None = None) -> bytes:
    """A new self-signed CA certificate (PEM) for the CA key ``ca_key_pem``, valid from ``now`` (default: the
    current time) for :data:`CA_VALIDITY`. Raises ``ValueError`` if the key is not an ECDSA private key."""
    now = now or datetime.now(UTC)
    key = _private_key(ca_key_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(certificate)


def _subject_alternative_names(identity: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(identity))]
    if identity in SERVERS:
        names += [x509.DNSName(host) for host in (identity, *_SERVER_DNS_NAMES)]
        names += [x509.IPAddress(address) for address in _SERVER_IP_ADDRESSES]
    return names


def leaf_certificate_pem(
    identity: str, key_pem: bytes, ca_cert_pem: bytes, ca_key_pem: bytes, now: datetime | None = None
) -> bytes:
    """A new certificate (PEM) of ``identity`` for the private key ``key_pem``, issued by the CA
    (``ca_cert_pem``, ``ca_key_pem``), valid from ``now`` for :data:`LEAF_VALIDITY` but never past the CA's
    own expiry. Names, key usages: see the module docstring. Raises ``ValueError`` for a key that is not ECDSA
    or an identity that is not one path segment."""
    if identity_of_spiffe_id(spiffe_id(identity)) != identity:
        raise ValueError(f"identity {identity!r} must be one non-empty path segment")
    now = now or datetime.now(UTC)
    key = _private_key(key_pem)
    ca_key = _private_key(ca_key_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity in SERVERS:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(identity)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(certificate)


def identity_of(certificate: x509.Certificate) -> str | None:
    """The mesh identity a certificate proves: the name in its one SPIFFE ID of the mesh's trust domain, or
    None if it has no such URI SAN (or several URIs, which X509-SVID forbids)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return identity_of_spiffe_id(uris[0]) if len(uris) == 1 else None


def _issued_by(certificate: x509.Certificate, authorities: Iterable[x509.Certificate]) -> bool:
    for authority in authorities:
        try:
            certificate.verify_directly_issued_by(authority)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def reissue_reason(
    identity: str, cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes, now: datetime | None = None
) -> str | None:
    """Why the existing certificate ``cert_pem`` of ``identity`` must be re-issued, or None if it is fine.

    Reasons: it does not parse; it is not for the key ``key_pem``; it was not issued by the CA
    ``ca_cert_pem``; its names are not those :func:`leaf_certificate_pem` gives ``identity``; it expires
    within :data:`RENEW_BEFORE` of ``now``.
    """
    now = now or datetime.now(UTC)
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "it is not a PEM certificate"
    if _public_der(certificate.public_key()) != _public_der(_private_key(key_pem).public_key()):
        return "it is not the certificate of its key"
    if not _issued_by(certificate, [x509.load_pem_x509_certificate(ca_cert_pem)]):
        return "it was not issued by the current mesh CA"
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it names no identity"
    if set(names) != set(_subject_alternative_names(identity)):
        return f"its names are not those of {identity}"
    if certificate.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {certificate.not_valid_after_utc:%Y-%m-%d}"
    return None


def ensure_ca(directory: Path, cert_mode: int = OWNER_ONLY) -> tuple[Path, Path]:
    """Paths of the mesh CA's certificate and key in ``directory`` (an existing secrets directory), made if
    missing. The key is created once and kept, readable by its owner only (0600) whatever ``cert_mode``: it
    only ever issues certificates, and no service reads it. The certificate is created with ``cert_mode``,
    and made again for the key if it is not the key's (the key was replaced to rotate the CA)."""
    key_path = ensure_secret(directory / CA_KEY_FILE, generate_key_pem, OWNER_ONLY)
    key_pem = key_path.read_bytes()
    cert_path = ensure_secret(directory / CA_CERT_FILE, lambda: ca_certificate_pem(key_pem), cert_mode)
    current = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if _public_der(current.public_key()) != _public_der(_private_key(key_pem).public_key()):
        replace_secret(cert_path, ca_certificate_pem(key_pem), cert_mode)
    return cert_path, key_path


def ensure_leaf(directory: Path, identity: str, mode: int = OWNER_ONLY) -> TlsFiles:
    """The TLS files of ``identity`` in ``directory``, where :func:`ensure_ca` made the CA: its key, created
    once with ``mode`` and kept, and its certificate, created with ``mode`` and re-issued in place when
    :func:`reissue_reason` gives a reason."""
    ca_cert_path, ca_key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    cert_name, key_name = leaf_file_names(identity)
    key_path = ensure_secret(directory / key_name, generate_key_pem, mode)
    key_pem, ca_cert_pem = key_path.read_bytes(), ca_cert_path.read_bytes()

    def issue() -> bytes:
        return leaf_certificate_pem(identity, key_pem, ca_cert_pem, ca_key_path.read_bytes())

    cert_path = ensure_secret(directory / cert_name, issue, mode)
    if reissue_reason(identity, cert_path.read_bytes(), key_pem, ca_cert_pem) is not None:
        replace_secret(cert_path, issue(), mode)
    return TlsFiles(ca_cert_path, cert_path, key_path)


def ensure_mesh_pki(
    directory: Path, identities: Iterable[str], mode: int = OWNER_ONLY
) -> Mapping[str, TlsFiles]:
    """The mesh CA and a certificate for each of ``identities`` in ``directory`` (an existing secrets
    directory, see :func:`crypto_mesh.secrets.secrets_dir`), made or renewed as :func:`ensure_ca` and
    :func:`ensure_leaf` say; every file but the CA key gets ``mode``. Returns identity → its
    :class:`TlsFiles`."""
    ensure_ca(directory, mode)
    return {identity: ensure_leaf(directory, identity, mode) for identity in identities}


def load_tls(ca_file: Path, cert_file: Path, key_file: Path, now: datetime | None = None) -> MeshTls:
    """Read and check one party's TLS files: ``ca_file`` holds one or more PEM CA certificates (more than
    one while a CA is being replaced), ``cert_file`` the party's PEM certificate, ``key_file`` its PEM private
    key.

    Raises ``OSError`` if a file cannot be read, ``ValueError`` (naming the file, never showing a key) if a
    file holds no certificate or key, the key is not the certificate's, the certificate was not issued by a
    CA of ``ca_file``, is not valid at ``now`` (default: the current time) or names no mesh identity.
    """
    now = now or datetime.now(UTC)
    ca_pem = Path(ca_file).read_bytes()
    cert_pem = Path(cert_file).read_bytes()
    key_pem = Path(key_file).read_bytes()
    try:
        authorities = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise ValueError(f"{ca_file} holds no PEM certificate") from None
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"{cert_file} holds no PEM certificate") from None
    try:
        key = _private_key(key_pem)
    except (ValueError, TypeError):
        raise ValueError(f"{key_file} holds no unencrypted ECDSA private key") from None
    if _public_der(certificate.public_key()) != _public_der(key.public_key()):
        raise ValueError(f"{key_file} is not the private key of the certificate in {cert_file}")
    if not _issued_by(certificate, authorities):
        raise ValueError(f"the certificate in {cert_file} was not issued by a CA of {ca_file}")
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise ValueError(
            f"the certificate in {cert_file} is valid from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
        )
    identity = identity_of(certificate)
    if identity is None:
        raise ValueError(f"the certificate in {cert_file} has no {spiffe_id('<name>')} URI SAN")
    return MeshTls(
        root_certificates=ca_pem, certificate_chain=cert_pem, private_key=key_pem, identity=identity
    )
