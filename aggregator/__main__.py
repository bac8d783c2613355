"""``python -m aggregator``: settings from ``AGGREGATOR_*`` environment variables, until SIGTERM."""

from aggregator.app import start
from aggregator.settings import AggregatorSettings
from crypto_mesh.runtime import run_service

if __name__ == "__main__":
    run_service("aggregator", AggregatorSettings, start)
