"""``Idempotency-Key`` (IETF draft-ietf-httpapi-idempotency-key-header): a request sent again with the same
key is answered with the first answer instead of being processed again.

The rules, transport-free (the HTTP views render an answer to :class:`~profile_bff.store.StoredAnswer` and
back):

- a key is 1 to 255 visible ASCII characters (the draft writes it as a Structured Field string; the quotes
  are optional here); it belongs to one user;
- the first request with a key reserves it, runs, and its answer is stored for ``BFF_IDEMPOTENCY_TTL_S``
  seconds, unless it is a 5xx (a failure of ours: the key is released and a retry runs again), or the request
  ends without an answer (cancelled: released too);
- a retry with the same key and the same request (method, path and body: :func:`fingerprint`) gets the stored
  answer; with another request it is :class:`~profile_bff.errors.IdempotencyMismatch` (the draft's 422), and
  while the first one still runs :class:`~profile_bff.errors.IdempotencyInFlight` (the draft's 409).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

from crypto_mesh.logs import get_logger
from profile_bff.errors import InvalidIdempotencyKey, StoreUnavailable
from profile_bff.store import StoredAnswer

log = get_logger(__name__)

#: ``Idempotency-Key`` values: 1 to 255 visible ASCII characters (the draft's sf-string, without quotes).
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def parse_key(raw: str) -> str:
    """The key of an ``Idempotency-Key`` header value, quoted or not. Raises
    :class:`InvalidIdempotencyKey`."""
    key = raw.strip().removeprefix('"').removesuffix('"')
    if not _KEY.fullmatch(key):
        raise InvalidIdempotencyKey("Idempotency-Key must be 1 to 255 visible ASCII characters")
    return key


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """SHA-256 of a request's method, path and body, each prefixed with its length (so that no two different
    requests share the concatenation)."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


class IdempotencyStore(Protocol):
    """Where keys and first answers are kept (:class:`profile_bff.store.ProfileStore`); every method raises
    :class:`~profile_bff.errors.StoreUnavailable` when the database cannot be reached."""

    def require_migrated(self) -> None: ...

    async def reserve_idempotency_key(
        self, user_id: int, key: str, request_hash: bytes, ttl_s: int
    ) -> StoredAnswer | None: ...

    async def store_idempotent_answer(self, user_id: int, key: str, answer: StoredAnswer) -> None: ...

    async def release_idempotency_key(self, user_id: int, key: str) -> None: ...


class Idempotency:
    """Runs a request at most once per key of a user (module docstring); answers are kept ``ttl_s``
    seconds."""

    def __init__(self, store: IdempotencyStore, ttl_s: int) -> None:
        self._store = store
        self._ttl_s = ttl_s

    async def run(
        self, user_id: int, key: str, request: bytes, answer: Callable[[], Awaitable[StoredAnswer]]
    ) -> tuple[StoredAnswer, bool]:
        """``(answer, replayed)``: the stored first answer to ``key`` (``replayed`` true), or the answer of
        ``answer()``, run now. ``request`` is the request's :func:`fingerprint`.

        Raises :class:`~profile_bff.errors.IdempotencyMismatch`,
        :class:`~profile_bff.errors.IdempotencyInFlight`, :class:`~profile_bff.errors.Starting` and
        :class:`StoreUnavailable`; whatever ``answer()`` raises propagates once the key is released.
        """
        self._store.require_migrated()
        stored = await self._store.reserve_idempotency_key(user_id, key, request, self._ttl_s)
        if stored is not None:
            return stored, True
        try:
            first = await answer()
        except BaseException:
            await self._release(user_id, key)
            raise
        if first.status >= 500:
            await self._release(user_id, key)
        else:
            await self._store.store_idempotent_answer(user_id, key, first)
        return first, False

    async def _release(self, user_id: int, key: str) -> None:
        try:
            await asyncio.shield(self._store.release_idempotency_key(user_id, key))
        except (StoreUnavailable, asyncio.CancelledError) as exc:
            # The reservation stays and answers 409 until it is abandoned; logged so an operator can see why.
            log.warning("idempotency_release_failed", user_id=user_id, error=repr(exc))
