"""aggregator service."""
