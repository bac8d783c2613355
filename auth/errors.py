"""Failures of the auth use cases, each naming the gRPC status the transport answers with.

The domain raises these; :mod:`auth.server` maps them to status codes. Messages are shown to the client, so
they never say more than the client may know (an unknown name and a wrong password read the same).
"""

from __future__ import annotations


class AuthError(Exception):
    """Base class; ``str(error)`` is the message sent to the client."""


class InvalidArgument(AuthError):
    """A malformed or missing field (``INVALID_ARGUMENT``)."""


class AlreadyExists(AuthError):
    """The name is taken, compared case-insensitively (``ALREADY_EXISTS``)."""


class Unauthenticated(AuthError):
    """Bad credentials, or an invalid, expired, rotated or revoked token (``UNAUTHENTICATED``)."""


class PermissionDenied(AuthError):
    """The caller proved who they are, but the object belongs to another user (``PERMISSION_DENIED``)."""


class NotFound(AuthError):
    """The proven user no longer exists (``NOT_FOUND``)."""


class Unavailable(AuthError):
    """The database cannot be reached; the client may retry (``UNAVAILABLE``)."""


class ResourceExhausted(AuthError):
    """Too many failed logins for this name (``RESOURCE_EXHAUSTED``); ``retry_after_s`` whole seconds (>= 1)
    until the next attempt can be admitted, sent as gRPC's ``grpc-retry-pushback-ms`` trailing metadata."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(Unavailable):
    """The password-hashing queue cannot answer this call before its deadline (``UNAVAILABLE``, with
    ``retry_after_s``, seconds, sent as gRPC's ``grpc-retry-pushback-ms`` trailing metadata)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
