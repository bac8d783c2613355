"""The one place that creates and reads the mesh's secret files.

``crypto-mesh up`` keeps its generated secrets under ``<MESH_DATA_DIR>/secrets`` (mode 0700, files 0600);
``crypto-mesh secrets DIR`` writes the files compose.yaml mounts under ``/run/secrets``. Both create each file
once and keep it afterwards, so running either again never rotates a secret behind a running service's back
(docs/SECURITY.md says how to rotate each one). Services read a secret through a ``*_FILE`` setting with
:func:`read_secret`; nothing in the code carries a default secret.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

#: Mode of a secret file that only its owner reads (the embedded mesh, where every process is the same user).
OWNER_ONLY = 0o600
#: Mode of a secret file bind-mounted by compose: the services run as another (non-root) user in their
#: containers, and compose mounts file secrets with their host mode; the directory (0700) keeps other users
#: of the host out.
COMPOSE_MOUNTED = 0o644


def secrets_dir(directory: Path) -> Path:
    """Create ``directory`` (and its parents) if needed, make it 0700, and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def ensure_secret(path: Path, make: Callable[[], bytes | str], mode: int = OWNER_ONLY) -> Path:
    """Path of the secret file ``path``, written with ``make()`` (bytes, or text written as UTF-8) if it does
    not exist yet; an existing file is kept as it is. The file is created with ``mode`` atomically (never
    readable by others, even for an instant, when ``mode`` is 0600). Returns ``path``."""
    if not path.exists():
        content = make()
        data = content.encode() if isinstance(content, str) else content
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    return path


def replace_secret(path: Path, content: bytes | str, mode: int = OWNER_ONLY) -> Path:
    """Write ``content`` (bytes, or text written as UTF-8) to ``path`` in place of what it held, atomically: a
    reader sees the old file or the new one, never a part of either. The new file has ``mode`` from its
    creation. For material that is renewed rather than kept (a certificate re-issued before it expires);
    a secret that must never change behind a running service is made with :func:`ensure_secret`. Returns
    ``path``."""
    data = content.encode() if isinstance(content, str) else content
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


def random_token() -> str:
    """A new random secret: 256 bits, base64url without padding (43 characters), safe in URLs and headers."""
    return secrets.token_urlsafe(32)


def read_secret(path: Path | str) -> str:
    """The text of the secret file ``path`` without its trailing newline.

    Raises ``OSError`` if the file cannot be read and ``ValueError`` if it is empty; neither message contains
    the secret.
    """
    text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return text
