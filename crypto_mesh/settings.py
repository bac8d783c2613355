"""Base class of every service's settings: environment variables, validated by pydantic-settings.

Each service defines one subclass with its own ``env_prefix`` (``AUTH_``, ``BFF_``, ``PROXY_``,
``AGGREGATOR_``, ``ETL_``, ``REPLAY_``, ``MESH_``). Secrets have no defaults: a missing one stops the
service at start-up with a message naming the variable. A value may also come from a file in ``/run/secrets``
named like the variable (``auth_database_url``), which is how compose.yaml hands over secrets.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crypto_mesh.pki import MeshTls, load_tls

#: Where container runtimes mount secrets (compose.yaml); a file there named like a variable sets that variable.
SECRETS_DIR = "/run/secrets"


class ServiceSettings(BaseSettings):
    """Settings every service shares.

    Environment: ``<PREFIX>LOG_LEVEL`` (``DEBUG``/``INFO``/``WARNING``/``ERROR``, default ``INFO``),
    ``<PREFIX>LOG_FORMAT`` (``console`` for ``key=value`` lines, ``json`` for one JSON object a line) and
    ``<PREFIX>ACCESS_LOG`` (``false``; ``true``: one ``http_request`` / ``grpc_request`` event a request, see
    :mod:`crypto_mesh.observe`).
    """

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, secrets_dir=SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
    access_log: bool = False


class MetricsPortSettings(ServiceSettings):
    """Settings of a service whose Prometheus ``GET /metrics`` has a port of its own (auth, socket_proxy, the
    BFF; :func:`crypto_mesh.metrics.serve_metrics`).

    - ``<PREFIX>METRICS_PORT`` (``0``: no metrics endpoint): the port, on the service's ``HOST``.
    - ``<PREFIX>METRICS_TOKEN_FILE`` (required with a port): the scrapers' service credential (``metrics_token``,
      one token a line, :mod:`crypto_mesh.servicecreds`): ``/metrics`` answers 401 without
      ``Authorization: Bearer <token>``.
    """

    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_token_file: FilePath | None = None

    @model_validator(mode="after")
    def _token_with_port(self):
        if self.metrics_port and self.metrics_token_file is None:
            raise ValueError("METRICS_TOKEN_FILE is required when METRICS_PORT is set")
        return self


class MeshTlsSettings(ServiceSettings):
    """Settings of a service that speaks gRPC in the mesh (serves it, or calls a service that does): its mesh
    identity as three PEM files, made by ``crypto-mesh up`` (under ``MESH_DATA_DIR/secrets``) and
    ``crypto-mesh secrets`` (for compose), see :mod:`crypto_mesh.pki`. All three are required and must name
    existing files: no gRPC in the mesh runs without mutual TLS.

    - ``<PREFIX>TLS_CA_FILE``: the mesh CA certificate(s) this party trusts (``mesh_ca.crt``; several
      concatenated while the CA is being replaced).
    - ``<PREFIX>TLS_CERT_FILE``: this party's certificate (``<identity>_tls.crt``).
    - ``<PREFIX>TLS_KEY_FILE``: its private key (``<identity>_tls.key``).
    """

    tls_ca_file: FilePath
    tls_cert_file: FilePath
    tls_key_file: FilePath

    def mesh_tls(self) -> MeshTls:
        """The three files read and checked (:func:`crypto_mesh.pki.load_tls`); raises ``OSError`` or
        ``ValueError`` (naming the file) if they cannot serve."""
        return load_tls(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
