"""Base class of every service's settings: environment variables, validated by pydantic-settings.

Each service defines one subclass with its own ``env_prefix`` (``AUTH_``, ``BFF_``, ``PROXY_``,
``AGGREGATOR_``, ``ETL_``, ``REPLAY_``, ``MESH_``). Secrets have no defaults: a missing one stops the
service at start-up with a message naming the variable.
"""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service shares.

    Environment: ``<PREFIX>LOG_LEVEL`` (``DEBUG``/``INFO``/``WARNING``/``ERROR``, default ``INFO``) and
    ``<PREFIX>LOG_FORMAT`` (``console`` for ``key=value`` lines, ``json`` for one JSON object a line).
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
