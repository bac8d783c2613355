"""The BFF's session cookies and the cross-site check of the routes they authenticate.

Cookies (RFC 6265bis): the refresh token and the login-device token, both ``HttpOnly; SameSite=Strict``.
Served over HTTPS (``BFF_COOKIE_SECURE=true``) they carry the ``__Host-`` prefix, which a browser accepts
only with ``Secure``, ``Path=/`` and no ``Domain``: such a cookie can be set by this very host over HTTPS
only, never by a sibling subdomain or a plain-HTTP response (cookie tossing, session fixation). The embedded
mesh serves plain HTTP on 127.0.0.1, where a ``Secure`` cookie is not sent back (curl) and neither prefix is
allowed without ``Secure``: there the cookies keep their plain names and narrower paths.

========================  ==========================  ================================
``BFF_COOKIE_SECURE``     refresh token               login-device token
========================  ==========================  ================================
true (default)            ``__Host-refresh_token; /`` ``__Host-login_device; /``
false (plain HTTP)        ``refresh_token; /v1``      ``login_device; /v1/login``
========================  ==========================  ================================

Cross-site requests (:func:`cross_site_refusal`): a cookie-authenticated route refuses a request a browser
sent on behalf of another site, using the Fetch Metadata header ``Sec-Fetch-Site`` (W3C Fetch Metadata Request
Headers) and ``Origin`` (RFC 6454; Fetch): ``cross-site`` is refused; ``same-site`` (a sibling subdomain,
which ``SameSite=Strict`` does not stop) only passes with an ``Origin`` in ``BFF_ALLOWED_ORIGINS``;
``same-origin`` and ``none`` (the user typed or bookmarked the address) pass; an ``Origin``, when sent, must
be the BFF's own origin or in ``BFF_ALLOWED_ORIGINS`` (``null`` never is). Clients that send neither header
(curl, scripts, services) are not browsers, so no other site can make them send a request: they pass.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CookieSpec:
    """The name, path and ``Secure`` attribute of one cookie."""

    name: str
    path: str
    secure: bool


def refresh_cookie(secure: bool) -> CookieSpec:
    """The refresh-token cookie (see the module docstring's table)."""
    if secure:
        return CookieSpec("__Host-refresh_token", "/", True)
    return CookieSpec("refresh_token", "/v1", False)


def device_cookie(secure: bool) -> CookieSpec:
    """The login-device cookie (see the module docstring's table)."""
    if secure:
        return CookieSpec("__Host-login_device", "/", True)
    return CookieSpec("login_device", "/v1/login", False)


def own_origins(scheme: str, host: str, secure: bool) -> frozenset[str]:
    """The BFF's own origins as a browser names them, for a request that reached it as ``scheme`` (``http``,
    ``https``) with ``Host: host`` (``127.0.0.1:8080``): ``scheme://host``, and with ``secure`` (behind a
    TLS-terminating proxy the BFF sees http while the browser names the https origin) ``https://host`` too.

    A page served by the BFF itself (the dashboard at ``/``) sends this ``Origin``. A page of another site
    cannot: its ``Origin`` is its own. (A rebinding name pointed at the BFF gets an origin of that name, but
    no cookie or token of the BFF's.)"""
    origins = {f"{scheme}://{host}"}
    if secure:
        origins.add(f"https://{host}")
    return frozenset(origins)


def origin_allowed(origin: str, own: Collection[str], allowed: Collection[str]) -> bool:
    """Whether the ``Origin`` header value ``origin`` is one of ``own`` (:func:`own_origins`) or of
    ``allowed`` (``BFF_ALLOWED_ORIGINS``); a trailing slash is ignored, ``null`` is never allowed."""
    origin = origin.strip().rstrip("/")
    return origin in own or origin in allowed


def cross_site_refusal(
    headers: Mapping[str, str], own_origins: Collection[str], allowed_origins: Collection[str]
) -> str | None:
    """Why a request with ``headers`` must be refused as cross-site, or ``None`` if it may proceed.

    ``own_origins``: the BFF's own origins as a browser names them (``https://api.example``, without a
    trailing slash); ``allowed_origins``: ``BFF_ALLOWED_ORIGINS``.
    """
    origin = headers.get("Origin")
    origin_ok = origin is not None and origin_allowed(origin, own_origins, allowed_origins)
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        site = site.strip().lower()
        if site == "cross-site":
            return "cross-site requests may not use the session cookie"
        if site == "same-site" and not origin_ok:
            return "requests from another origin of this site may not use the session cookie"
        if site not in ("same-origin", "same-site", "none"):
            return f"Sec-Fetch-Site {site!r} is not a value browsers send"
    if origin is not None and not origin_ok:
        return "this origin may not use the session cookie"
    return None
