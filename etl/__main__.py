"""``python -m etl``: the Kafka → ClickHouse loader and its read-only SQL endpoint, until SIGTERM."""

from crypto_mesh.runtime import run_service
from etl.app import start, tune_interpreter
from etl.settings import EtlSettings

if __name__ == "__main__":
    tune_interpreter()
    run_service("etl", EtlSettings, start)
