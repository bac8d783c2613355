"""``python -m crypto_mesh.replay``: serve the recordings of ``REPLAY_FILES`` until SIGTERM."""

from crypto_mesh.replay.server import start
from crypto_mesh.replay.settings import ReplaySettings
from crypto_mesh.runtime import run_service

if __name__ == "__main__":
    run_service("replay", ReplaySettings, start)
