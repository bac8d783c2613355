"""The service credential the tests' aggregators and ETLs accept, and the header their callers send.

One token file for the whole test session (a fresh random token in a temporary directory), made the way
``crypto-mesh up`` makes its own (:mod:`crypto_mesh.secrets`), readable from plain helper functions as well as
fixtures.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from crypto_mesh.secrets import ensure_secret, random_token, secrets_dir
from crypto_mesh.servicecreds import bearer_header, read_token


@functools.cache
def service_token_file() -> Path:
    """The session's token file (``*_API_TOKEN_FILE`` of the services, ``*_TOKEN_FILE`` of their callers)."""
    directory = Path(tempfile.mkdtemp(prefix="service-creds-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return ensure_secret(secrets_dir(directory / "secrets") / "api_token", random_token)


def service_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <the session's token>"}``."""
    return bearer_header(read_token(service_token_file()))
