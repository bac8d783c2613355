"""What ``crypto-mesh`` needs to know of a mesh without starting one: its settings, the files it keeps in its
data directory, and the state of a running mesh. Kept apart from :mod:`launcher.mesh` (which imports every
service to plan their processes) so that commands like ``crypto-mesh sql`` start in a fraction of the time.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from crypto_mesh.binance.data import DEFAULT_RECORDING
from crypto_mesh.netutil import below_ephemeral_ports, parse_port_range
from crypto_mesh.settings import MAX_WORKERS, ServiceSettings

#: Name of the file, in the data directory, that describes a running mesh (written once every process is healthy).
STATE_FILE = "mesh.json"
#: The data directory's lock, held by ``crypto-mesh up`` for its mesh's lifetime (:class:`launcher.control.MeshLock`).
LOCK_FILE = "mesh.lock"
#: Each process's pid, start time and exit status, rewritten by ``crypto-mesh up`` as they change.
PROCESSES_FILE = "processes.json"
#: Directory, in the data directory, of every process's output (``<name>.log``), emptied at each start.
LOGS_DIR = "logs"


class MeshSettings(ServiceSettings):
    """Settings of ``crypto-mesh`` (environment prefix ``MESH_``).

    Each ``*_URL``/servers setting left unset means "run the embedded default"; set it to use a real server.
    """

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore", frozen=True)

    data_dir: Path = Path(".mesh")
    bff_host: str = "127.0.0.1"
    bff_port: int = 8080
    #: The BFF's worker processes on ``bff_port`` (its ``BFF_WORKERS``; docs/OPERATIONS.md).
    bff_workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    #: The recording the replay exchange plays: by default the shipped real Binance ``@trade`` frames
    #: (data/binance/SOURCES.md).
    replay_file: str = str(DEFAULT_RECORDING)
    replay_speed: float = 1.0
    #: Server URL without a database, e.g. ``postgresql+asyncpg://user:pass@db:5432``; databases ``auth``, ``profile``.
    postgres_url: str | None = None
    #: A real Redis server's URL with the credentials the BFF and the aggregator both use (the embedded one has
    #: a user per service, :mod:`crypto_mesh.redisacl`).
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    clickhouse_url: str | None = None
    exchange_url: str | None = None
    #: The REST base URL of a real exchange given by ``MESH_EXCHANGE_URL`` (``https://api.binance.com``),
    #: where the BFF fetches the symbol list; unset with a real exchange, the BFF keeps its shipped snapshot.
    #: The embedded replay exchange serves both on one port.
    exchange_rest_url: str | None = None
    #: Seconds to wait for every process to report healthy.
    ready_timeout_s: float = 120.0
    #: ``FIRST-LAST`` (e.g. ``20000-20999``): the ports the mesh's internal servers (engines, services,
    #: metrics, the replay exchange) take, the first free ones in turn; unset, the 1,000 ports just below the
    #: OS's ephemeral ports (:func:`crypto_mesh.netutil.below_ephemeral_ports`), or free ports the OS picks
    #: where those are unknown. A range outside the OS's ephemeral ports keeps a port from being taken between
    #: the pick and the server's start: by another program, or by a connection the mesh's own processes open
    #: meanwhile (its local end), which holds it for as long as it lasts. It also suits firewall rules. The
    #: BFF's port is ``MESH_BFF_PORT``.
    ports: str | None = None

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: str | None) -> str | None:
        if value is not None:
            parse_port_range(value)
        return value

    @property
    def port_range(self) -> range | None:
        """:attr:`ports` as a range; unset, the ports below the OS's ephemeral ones (None, the OS picks, where
        those are unknown)."""
        return below_ephemeral_ports() if self.ports is None else parse_port_range(self.ports)


#: Files, under ``<MESH_DATA_DIR>/secrets``, of the service credentials of the internal HTTP APIs
#: (:mod:`crypto_mesh.servicecreds`): the aggregator's control API and the ETL's HTTP API.
AGGREGATOR_TOKEN_FILE = "aggregator_api_token"
ETL_TOKEN_FILE = "etl_api_token"
#: The scrapers' credential of the metrics ports of auth, socket_proxy and the BFF
#: (:class:`crypto_mesh.settings.MetricsPortSettings`); the aggregator's and the ETL's ``/metrics`` take their
#: API's token.
METRICS_TOKEN_FILE = "metrics_token"
#: The password of Grafana's ``admin`` user in compose's ``monitoring`` profile.
GRAFANA_ADMIN_PASSWORD_FILE = "grafana_admin_password"
#: The secret files of compose's ``monitoring`` profile, made by ``crypto-mesh secrets``.
MONITORING_SECRET_FILES = (METRICS_TOKEN_FILE, GRAFANA_ADMIN_PASSWORD_FILE)


def read_state(data_dir: Path) -> dict:
    """The state of the running mesh of ``data_dir`` (``mesh.json``). Raises FileNotFoundError if none runs."""
    return json.loads((data_dir / STATE_FILE).read_text())
