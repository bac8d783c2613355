"""The mesh's one HTTP error layer: the answer ``{"error": {"code": ..., "message": ...}}`` (docs/CONTRACTS.md),
the :class:`ApiError` a handler raises, and the middleware that turns every failure of a request into that answer.

Used by every HTTP surface: the BFF, the aggregator's control API and the ETL's HTTP API. A service names how its
own domain errors map to HTTP (``error_middleware({StoreUnavailable: ..., ...})``); everything else is the same
everywhere: aiohttp's HTTP errors keep their status with a JSON body, and an unexpected exception is logged with
its traceback and answered 500 without details, so no internal state reaches a client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: Error codes of aiohttp's own HTTP errors (routing, body size, content type), by status.
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error a handler raises to answer ``status`` with ``{"error": {"code": code, "message": message}}`` and
    ``headers`` (e.g. ``Retry-After``). ``code`` is a snake_case word a client can switch on, ``message`` one
    sentence for a person."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """This error as an HTTP answer."""
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON error answer: ``status``, body ``{"error": {"code": code, "message": message}}``, and ``headers``."""
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers=headers,
        dumps=jsonutil.dumps_str,
    )


#: How a service maps one of its domain errors to an answer: ``(error, request) → ApiError``.
ErrorMapping = Callable[[Exception, web.Request], ApiError]


def error_middleware(domain_errors: Mapping[type[Exception], ErrorMapping] | None = None):
    """An aiohttp middleware that answers every failure of a handler as JSON.

    - :class:`ApiError` → its status, code, message and headers;
    - an exception of a class in ``domain_errors`` (the nearest class in its MRO wins) → the ApiError its
      mapping returns;
    - ``web.HTTPException`` with status ≥ 400 → that status, a code from :data:`HTTP_CODES` (else
      ``http_error``), its reason, and its ``Allow`` header if any; lower statuses (redirects) pass through;
    - anything else → logged as ``unhandled_error`` with the traceback, answered 500 ``internal``.
    """
    mappings = dict(domain_errors or {})

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, HTTP_CODES.get(exc.status, "http_error"), exc.reason, headers)
        except Exception as exc:
            mapping = _mapping_for(mappings, type(exc))
            if mapping is not None:
                return mapping(exc, request).response()
            log.exception("unhandled_error", method=request.method, path=request.path)
            return error_response(500, "internal", "internal error")

    return middleware


def _mapping_for(
    mappings: Mapping[type[Exception], ErrorMapping], error_type: type[BaseException]
) -> ErrorMapping | None:
    for cls in error_type.__mro__:
        if cls in mappings:
            return mappings[cls]
    return None
