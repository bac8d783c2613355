"""``python -m auth``: run the auth service with settings from ``AUTH_*`` environment variables."""

from auth.server import start
from auth.settings import AuthSettings
from crypto_mesh.runtime import run_service

if __name__ == "__main__":
    run_service("auth", AuthSettings, start)
