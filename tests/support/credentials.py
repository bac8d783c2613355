"""Credentials of the test session: the service credential the tests' aggregators and ETLs accept (and the
header their callers send), and the passwords of the test Redis server's users.

Made once per session (fresh random values, the token file in a temporary directory) the way ``crypto-mesh up``
makes its own (:mod:`crypto_mesh.secrets`), and readable from plain helper functions as well as fixtures.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from crypto_mesh.redisacl import USER_RULES, acl_file_text, url_with_user, user_line
from crypto_mesh.secrets import ensure_secret, random_token, secrets_dir, replace_secret
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


#: The test Redis server's user with every right: the tests' own seeding and inspection (``redis_url``).
TESTS_REDIS_USER = "tests"


@functools.cache
def redis_passwords() -> dict[str, str]:
    """User → password of the test Redis server: each service's user, and :data:`TESTS_REDIS_USER`."""
    return {user: random_token() for user in (*USER_RULES, TESTS_REDIS_USER)}


def redis_user_url(url: str, user: str) -> str:
    """``url`` (any of the test Redis server's URLs, on any database) as Redis user ``user``."""
    return url_with_user(url, user, redis_passwords()[user])


def redis_acl_file(directory: Path) -> Path:
    """An ACL file in ``directory`` for a test Redis server (``redis_command(..., acl_file)``): the mesh's
    users with the session's passwords, plus :data:`TESTS_REDIS_USER` with every right."""
    passwords = redis_passwords()
    tests_user = user_line(TESTS_REDIS_USER, passwords[TESTS_REDIS_USER], "~* &* +@all")
    text = acl_file_text({user: passwords[user] for user in USER_RULES}, extra=(tests_user,))
    return replace_secret(secrets_dir(directory) / "redis_users.acl", text)
