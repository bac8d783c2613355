"""``python -m socket_proxy``: serve the gRPC SocketProxy until SIGTERM."""

from crypto_mesh.runtime import run_service
from socket_proxy.server import start
from socket_proxy.settings import ProxySettings

if __name__ == "__main__":
    run_service("socket_proxy", ProxySettings, start)
