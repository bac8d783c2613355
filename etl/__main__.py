"""``python -m etl``: the Kafka → ClickHouse loader and its read-only SQL endpoint, until SIGTERM."""

from crypto_mesh.runtime import run_service
from etl.app import start
from etl.settings import EtlSettings

if __name__ == "__main__":
    run_service("etl", EtlSettings, start)
