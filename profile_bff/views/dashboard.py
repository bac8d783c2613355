"""The dashboard: the web page at ``/`` and its files under ``/dashboard/``, and the security headers of
every answer.

The page is plain HTML, CSS and JavaScript modules in ``profile_bff/dashboard/`` (shipped in the wheel with
the package; no build step), plus the charting library vendored under ``dashboard/vendor/`` by ``make
vendor``. It talks to the BFF's own REST routes and profile WebSocket like any other client (README,
"Dashboard"). The files are read once at start and served from memory, with an ``ETag`` so that a browser
revalidates them (``Cache-Control: no-cache``) and gets ``304`` while they are unchanged. Only the files of
that directory are served: a path is looked up in the table read at start, never joined to a directory.

Security headers (:func:`security_headers`, every answer): ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer``; the page and its files also get a Content-Security-Policy that allows
only the BFF's own origin (:data:`PAGE_CSP`: no inline script or style, no other host, no framing), and
``X-Frame-Options``, ``Cross-Origin-Opener-Policy``, ``Cross-Origin-Resource-Policy`` and
``Permissions-Policy``; every other answer (JSON) gets :data:`API_CSP`, which allows nothing to load or
frame it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from crypto_mesh.httperrors import ApiError
from profile_bff.ceilings import DASHBOARD_ROUTES

#: Where the page's files live in the package.
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
#: The content type of each kind of file served; a file of any other kind is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
#: The page's Content-Security-Policy (CSP Level 3): scripts, styles, images, fonts and connections (REST and
#: the WebSocket: ``'self'`` covers ``ws:``/``wss:`` of the same host) from the BFF's own origin only, no
#: inline script or style, no plugins, no ``<base>``, forms posted to itself only, never framed.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The Content-Security-Policy of every other answer: JSON, which nothing may load anything for or frame.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
#: Headers of the page and its files besides the CSP.
PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
#: Headers of every answer.
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str


class DashboardFiles:
    """The files of ``directory`` (default :data:`DASHBOARD_DIR`) by their path relative to it
    (``js/app.js``), read once; files of a kind outside :data:`CONTENT_TYPES` are left out. Raises
    ``OSError`` if the directory cannot be read."""

    def __init__(self, directory: Path = DASHBOARD_DIR) -> None:
        self._files: dict[str, _File] = {}
        for path in sorted(directory.rglob("*")):
            content_type = CONTENT_TYPES.get(path.suffix)
            if content_type is None or not path.is_file():
                continue
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._files[path.relative_to(directory).as_posix()] = _File(body, content_type, etag)

    def content_types(self) -> dict[str, str]:
        """``{relative path: content type}`` of every file served."""
        return {name: found.content_type for name, found in self._files.items()}

    async def page(self, request: web.Request) -> web.Response:
        """``GET /`` → the page, ``index.html``."""
        return self._answer(request, "index.html")

    async def asset(self, request: web.Request) -> web.Response:
        """``GET /dashboard/{path}`` → one of the page's files; 404 ``not_found`` for any other path."""
        return self._answer(request, request.match_info["path"])

    def _answer(self, request: web.Request, name: str) -> web.Response:
        found = self._files.get(name)
        if found is None:
            raise ApiError(404, "not_found", "no such file")
        headers = {"ETag": found.etag, "Cache-Control": "no-cache"}
        if found.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        response = web.Response(body=found.body, headers=headers)
        response.headers["Content-Type"] = found.content_type
        return response


def add_routes(app: web.Application, files: DashboardFiles) -> None:
    """The dashboard's routes (:data:`profile_bff.ceilings.DASHBOARD_ROUTES`) and :func:`security_headers`."""
    app.router.add_get("/", files.page)
    app.router.add_get("/dashboard/{path:[A-Za-z0-9_./-]+}", files.asset)
    app.on_response_prepare.append(security_headers)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` hook: the headers of the module docstring, by route."""
    resource = request.match_info.route.resource if request.match_info.route is not None else None
    page = resource is not None and resource.canonical in DASHBOARD_ROUTES
    response.headers.update(COMMON_HEADERS)
    if page:
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers.update(PAGE_HEADERS)
    else:
        response.headers.setdefault("Content-Security-Policy", API_CSP)
