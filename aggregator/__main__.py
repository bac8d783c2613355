"""``python -m aggregator``: settings from ``AGGREGATOR_*`` environment variables, until SIGTERM.

Garbage collection is tuned for the frames passing through (:func:`crypto_mesh.runtime.tune_garbage_collector`):
each trade frame leaves short-lived container objects behind (its decoded JSON, its ``Trade``), which
reference counting frees. With CPython's default thresholds a young collection ran every 700 of them and took
13 % of the process's CPU in ``benchmarks/bench_market_path.py``; a young collection now waits for
:data:`GC_THRESHOLDS`'s first figure, and a full one for 100 collections of the middle generation.
"""

from aggregator.app import start
from aggregator.settings import AggregatorSettings
from crypto_mesh.runtime import run_service, tune_garbage_collector

#: :func:`gc.set_threshold` of the aggregator process (CPython's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)

if __name__ == "__main__":
    tune_garbage_collector(*GC_THRESHOLDS)
    run_service("aggregator", AggregatorSettings, start)
