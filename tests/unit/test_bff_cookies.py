"""The session cookies' names and attributes, and the cross-site decision, pure (profile_bff/cookies.py).
The routes that apply them are tested in tests/test_security_bff.py."""

from __future__ import annotations

import pytest

from profile_bff.cookies import (
    CookieSpec,
    cross_site_refusal,
    device_cookie,
    origin_allowed,
    own_origins,
    refresh_cookie,
)

OWN = {"https://api.example"}
ALLOWED = ("https://app.example",)


def test_over_https_the_cookies_take_the_host_prefix_with_its_required_attributes():
    # RFC 6265bis §4.1.3.2: __Host- requires Secure, Path=/ and no Domain.
    assert refresh_cookie(secure=True) == CookieSpec("__Host-refresh_token", "/", True)
    assert device_cookie(secure=True) == CookieSpec("__Host-login_device", "/", True)


def test_on_plain_http_the_cookies_keep_plain_names_since_no_prefix_is_allowed_without_secure():
    assert refresh_cookie(secure=False) == CookieSpec("refresh_token", "/v1", False)
    assert device_cookie(secure=False) == CookieSpec("login_device", "/v1/login", False)


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts, services: no browser, so no other site can make them send anything
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://api.example"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {"Sec-Fetch-Site": "SAME-ORIGIN"},
        {"Origin": "https://api.example/"},
        {"Origin": "https://app.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://app.example"},
    ],
)
def test_requests_of_this_origin_of_allowed_origins_and_of_non_browsers_proceed(headers):
    assert cross_site_refusal(headers, OWN, ALLOWED) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://app.example"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
        {"Origin": "https://evil.example"},
        {"Origin": "http://api.example"},
        {"Origin": "null"},
        {"Origin": ""},
        {"Sec-Fetch-Site": "something-else"},
    ],
)
def test_requests_a_browser_sends_for_another_site_are_refused(headers):
    assert cross_site_refusal(headers, OWN, ALLOWED)


def test_the_own_origin_is_the_scheme_and_host_the_request_reached_and_https_too_behind_a_tls_proxy():
    assert own_origins("http", "127.0.0.1:8080", secure=False) == {"http://127.0.0.1:8080"}
    assert own_origins("http", "api.example", secure=True) == {"http://api.example", "https://api.example"}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://127.0.0.1:8080", True),  # the dashboard the BFF serves itself
        ("http://127.0.0.1:8080/", True),
        ("https://app.example", True),
        ("http://localhost:8080", False),  # another origin of the same machine is another origin
        ("http://127.0.0.1:8081", False),
        ("null", False),
        ("", False),
    ],
)
def test_an_origin_is_allowed_when_it_is_the_bffs_own_or_listed(origin, allowed):
    assert origin_allowed(origin, own_origins("http", "127.0.0.1:8080", secure=False), ALLOWED) is allowed
