"""``python -m launcher.replay``: serve the recordings of ``REPLAY_FILES`` until SIGTERM."""

from launcher.replay.server import start
from launcher.replay.settings import ReplaySettings
from crypto_mesh.runtime import run_service

if __name__ == "__main__":
    run_service("replay", ReplaySettings, start)
