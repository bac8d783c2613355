"""Base class of every service's settings: environment variables, validated by pydantic-settings.

Each service defines one subclass with its own ``env_prefix`` (``AUTH_``, ``BFF_``, ``PROXY_``,
``AGGREGATOR_``, ``ETL_``, ``REPLAY_``, ``MESH_``). Secrets have no defaults: a missing one stops the
service at start-up with a message naming the variable. A value may also come from a file in ``/run/secrets``
named like the variable (``auth_database_url``), which is how compose.yaml hands over secrets.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where container runtimes mount secrets (compose.yaml); a file there named like a variable sets that variable.
SECRETS_DIR = "/run/secrets"


class ServiceSettings(BaseSettings):
    """Settings every service shares.

    Environment: ``<PREFIX>LOG_LEVEL`` (``DEBUG``/``INFO``/``WARNING``/``ERROR``, default ``INFO``) and
    ``<PREFIX>LOG_FORMAT`` (``console`` for ``key=value`` lines, ``json`` for one JSON object a line).
    """

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, secrets_dir=SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
