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


#: The most worker processes one service may run (``<PREFIX>WORKERS``): more than a machine has cores is
#: already a misconfiguration, and each worker holds its own connections to every engine.
MAX_WORKERS = 64


class WorkerSettings(ServiceSettings):
    """Settings of a service that can run several worker processes on one port, one machine
    (:mod:`crypto_mesh.workers`; the BFF).

    - ``<PREFIX>WORKERS`` (``1``, at most :data:`MAX_WORKERS`): with ``1``, ``python -m <service>`` is the one
      process that serves, as every service is. With ``N > 1`` it becomes a supervisor that starts ``N``
      worker processes, each a whole service of its own (its own engine connections, pub/sub subscription,
      consumer-group membership), all listening on ``<PREFIX>HOST:<PREFIX>PORT`` with ``SO_REUSEPORT``: the
      kernel spreads new connections over them. ``<PREFIX>PORT`` must then be a fixed port (not 0). Worker ``i``
      (0 to N-1) serves its metrics on ``<PREFIX>METRICS_PORT + i``, so each worker's series are scraped as
      one target (docs/OPERATIONS.md).
    """

    host: str
    port: int
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)

    @model_validator(mode="after")
    def _workers_share_a_fixed_port(self):
        if self.workers == 1:
            return self
        prefix = str(self.model_config.get("env_prefix", "")).upper()
        if self.port == 0:
            raise ValueError(
                f"{prefix}PORT must be a fixed port, not 0, when {prefix}WORKERS > 1: the workers share it"
            )
        metrics_port = getattr(self, "metrics_port", 0)
        if metrics_port and metrics_port + self.workers - 1 > 65535:
            raise ValueError(
                f"{prefix}METRICS_PORT + {prefix}WORKERS - 1 must be a port: worker i serves its metrics on "
                f"{prefix}METRICS_PORT + i"
            )
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
