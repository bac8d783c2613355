"""``python -m profile_bff``: the REST + WebSocket backend-for-frontend, until SIGTERM.

It runs on uvloop where uvloop is installed (Linux), whose transports make the WebSocket fan-out cheaper per
message, else on asyncio's own loop, as every service does (:func:`crypto_mesh.runtime.run_service`).

Garbage collection is tuned for many long-lived sockets: everything imported before serving is moved out of
the collector's reach (:func:`gc.freeze`), and the collector runs less often (:data:`GC_THRESHOLDS`). A full
collection walks every object of every open socket and stops the event loop meanwhile: 0.4 s with 5,000
sockets, up to 0.9 s with 10,000 on the 2-CPU benchmark machine (benchmarks/bench_bff.py); with CPython's
default thresholds one came every few seconds while prices were pushed to 10,000 sockets. With these, a young
collection waits for 20,000 net new objects (tens of milliseconds at most; of what a fan-out allocates, only
each user's new coin totals outlive it, in tuples of atomic values that the collector stops tracking), and a
full one for 100 collections of the middle generation: none came during the benchmark's price phase.

The soft descriptor limit is raised to the hard one before serving, since the connection cap
(``BFF_MAX_CONNECTIONS``) is bounded by it (:func:`profile_bff.ceilings.raise_descriptor_limit`).
"""

from crypto_mesh.runtime import run_service, tune_garbage_collector
from profile_bff.app import start
from profile_bff.ceilings import raise_descriptor_limit
from profile_bff.settings import BffSettings

#: :func:`gc.set_threshold` of the BFF process (CPython's defaults: 700, 10, 10).
GC_THRESHOLDS = (20_000, 20, 100)

if __name__ == "__main__":
    tune_garbage_collector(*GC_THRESHOLDS)
    raise_descriptor_limit()
    run_service("profile_bff", BffSettings, start)
