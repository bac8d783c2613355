"""``python -m socket_proxy``: serve the gRPC SocketProxy until SIGTERM.

Garbage collection is tuned for the frames passing through (:func:`crypto_mesh.runtime.tune_garbage_collector`):
each frame leaves a few short-lived container objects behind (the websocket library's frame and its parser's
state), which reference counting frees. With CPython's default thresholds a young collection ran every 700 of
them and took 7 % of the process's CPU in ``benchmarks/bench_market_path.py``; a young collection now waits for
:data:`GC_THRESHOLDS`'s first figure, and a full one for 100 collections of the middle generation.
"""

from crypto_mesh.runtime import run_service, tune_garbage_collector
from socket_proxy.server import start
from socket_proxy.settings import ProxySettings

#: :func:`gc.set_threshold` of the socket_proxy process (CPython's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)

if __name__ == "__main__":
    tune_garbage_collector(*GC_THRESHOLDS)
    run_service("socket_proxy", ProxySettings, start)
