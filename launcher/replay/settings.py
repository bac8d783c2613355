"""Settings of the replay exchange (environment variables with the ``REPLAY_`` prefix, docs/CONTRACTS.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from crypto_mesh import binance
from crypto_mesh.settings import ServiceSettings

#: The shipped recording of real Binance ``@trade`` frames (BTCUSDT and ETHUSDT, 2024-08-08, ~11 minutes).
DEFAULT_RECORDING = binance.DEFAULT_RECORDING


def recording_paths(text: str) -> tuple[Path, ...]:
    """The paths of a comma-separated list of recordings (``REPLAY_FILES``, ``MESH_REPLAY_FILE``); ValueError
    if it names none."""
    paths = tuple(Path(part.strip()) for part in text.split(",") if part.strip())
    if not paths:
        raise ValueError("REPLAY_FILES names no file")
    return paths


class ReplaySettings(ServiceSettings):
    """``REPLAY_HOST`` (127.0.0.1), ``REPLAY_PORT`` (9443; 0 picks a free port), ``REPLAY_FILES`` (comma-separated
    paths of recordings in the canonical format, plain or gzip; default: the shipped trade recording),
    ``REPLAY_SPEED`` (1.0 = real time, 10 = ten times faster, 0 = as fast as possible),
    ``REPLAY_EXCHANGE_INFO_FILE`` (the body ``GET /api/v3/exchangeInfo`` answers, plain or gzip, read again
    when the file changes; default: the shipped 2021-10-12 snapshot) and ``REPLAY_REQUEST_WEIGHT_PER_MINUTE``
    (6000, Binance's REST request-weight limit; beyond it 429). See :mod:`launcher.replay.rest`."""

    model_config = SettingsConfigDict(env_prefix="REPLAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=9443, ge=0, le=65535)
    files: Annotated[tuple[Path, ...], NoDecode] = (DEFAULT_RECORDING,)
    speed: float = Field(default=1.0, ge=0)
    exchange_info_file: Path = binance.DEFAULT_EXCHANGE_INFO
    request_weight_per_minute: int = Field(default=binance.rest.REQUEST_WEIGHT_PER_MINUTE, gt=0)

    @field_validator("files", mode="before")
    @classmethod
    def _split_files(cls, value: object) -> object:
        return recording_paths(value) if isinstance(value, str) else value
