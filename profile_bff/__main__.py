"""``python -m profile_bff``: the REST + WebSocket backend-for-frontend, until SIGTERM."""

from crypto_mesh.runtime import run_service
from profile_bff.app import start
from profile_bff.settings import BffSettings

if __name__ == "__main__":
    run_service("profile_bff", BffSettings, start)
