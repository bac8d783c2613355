"""User names and passwords: normalisation, validation and bcrypt hashing.

Names are NFKC-normalised (Unicode UAX #15, so full-width ``ａｌｉｃｅ`` is ``alice``), stripped, and must
then be 3..32 characters of ASCII letters, digits, ``_``, ``.`` and ``-``. Uniqueness is case-insensitive:
the store keeps :func:`name_key` (the lowercased name) under a unique constraint, and the name as typed for
display.

Passwords are NFKC-normalised too (NIST SP 800-63B §5.1.1.2), so the same password typed on two keyboards
that compose accents differently is the same password. They need at least 8 characters and at most 72 UTF-8
bytes: bcrypt reads only 72 bytes, and a longer password is refused rather than silently truncated.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from auth.errors import InvalidArgument

NAME_MIN_CHARS = 3
NAME_MAX_CHARS = 32
PASSWORD_MIN_CHARS = 8
#: bcrypt's input limit (the key schedule of Blowfish takes 72 bytes).
PASSWORD_MAX_BYTES = 72
#: Niceness of the hashing threads (Linux, 0..19): under contention the scheduler favours request handling
#: (this process's event loop, the BFF and PostgreSQL on the same host, each weighted about 3 times a hashing
#: thread at 5), so a burst of logins slows logins down instead of stalling everything else, while hashing
#: still gets a fair share of a host busy with other work (at 10 or more it would starve there).
HASH_THREAD_NICENESS = 5

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


def normalize_name(raw: str) -> str:
    """The canonical form of a user name: NFKC, stripped, checked.

    Raises :class:`~auth.errors.InvalidArgument` with a message saying which rule failed.
    """
    name = unicodedata.normalize("NFKC", raw).strip()
    if not name:
        raise InvalidArgument("name is required")
    if not NAME_MIN_CHARS <= len(name) <= NAME_MAX_CHARS:
        raise InvalidArgument(f"name must be {NAME_MIN_CHARS} to {NAME_MAX_CHARS} characters long")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument("name may contain only ASCII letters, digits, '_', '.' and '-'")
    return name


def name_key(name: str) -> str:
    """The uniqueness key of a normalised name: ``"Alice"`` and ``"alice"`` share the key ``"alice"``."""
    return name.lower()


def normalize_password(raw: str) -> bytes:
    """The bytes bcrypt hashes: the NFKC form of ``raw`` in UTF-8.

    Raises :class:`~auth.errors.InvalidArgument` if it is empty, shorter than 8 characters or longer than
    72 UTF-8 bytes.
    """
    password = unicodedata.normalize("NFKC", raw)
    if not password:
        raise InvalidArgument("password is required")
    if len(password) < PASSWORD_MIN_CHARS:
        raise InvalidArgument(f"password must be at least {PASSWORD_MIN_CHARS} characters long")
    encoded = password.encode("utf-8")
    if len(encoded) > PASSWORD_MAX_BYTES:
        raise InvalidArgument(
            f"password must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8 (bcrypt's limit); "
            f"this one has {len(encoded)}"
        )
    return encoded


def candidate_password(raw: str) -> bytes | None:
    """The bytes to check a presented password with, or ``None`` if no stored hash can ever match it.

    Unlike :func:`normalize_password` this applies no length policy beyond bcrypt's own limit, so a change
    of the policy never locks out users whose password predates it.
    """
    encoded = unicodedata.normalize("NFKC", raw).encode("utf-8")
    if not encoded or len(encoded) > PASSWORD_MAX_BYTES:
        return None
    return encoded


def _lower_thread_priority() -> None:
    """Renice the calling thread (Linux ``setpriority`` takes a thread id); elsewhere, leave it as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)
    except (AttributeError, OSError):
        pass


class PasswordHasher:
    """bcrypt at a fixed cost, run in worker threads so that hashing never blocks the event loop.

    ``cost`` is bcrypt's log2 work factor (12 takes about 0.25 s on one core). Hashing runs on one thread
    per CPU (bcrypt releases the GIL), at lower priority (:data:`HASH_THREAD_NICENESS`); calls beyond that
    wait in the executor's queue, bounded by the server's limit of concurrent calls. :meth:`verify_unknown`
    spends the same time as a real check, against a dummy hash, so that an unknown name and a wrong password
    cannot be told apart by timing. :meth:`close` stops the threads.
    """

    def __init__(self, cost: int) -> None:
        self.cost = cost
        self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self._executor = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1, thread_name_prefix="bcrypt", initializer=_lower_thread_priority
        )

    def close(self) -> None:
        """Stop the hashing threads once the checks in progress are done."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def hash(self, password: bytes) -> str:
        """The modular-crypt bcrypt hash (``$2b$<cost>$<salt+digest>``) of ``password``."""
        hashed = await self._run(bcrypt.hashpw, password, bcrypt.gensalt(self.cost))
        return hashed.decode("ascii")

    async def verify(self, password: bytes | None, stored_hash: str) -> bool:
        """True if ``password`` matches ``stored_hash``; a ``None`` password is checked and fails."""
        if password is None:
            await self.verify_unknown()
            return False
        return await self._run(bcrypt.checkpw, password, stored_hash.encode("ascii"))

    def needs_rehash(self, stored_hash: str) -> bool:
        """True if ``stored_hash`` was made at another cost than the current one (``$2b$<cost>$...``), so
        that raising ``BCRYPT_COST`` upgrades each user's hash at their next successful login."""
        parts = stored_hash.split("$")
        return len(parts) < 3 or parts[2] != f"{self.cost:02d}"

    async def verify_unknown(self) -> None:
        """Spend the time of one check without a user to check against."""
        await self._run(bcrypt.checkpw, b"not the password", self._dummy_hash)
