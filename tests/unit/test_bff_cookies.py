"""The session cookies' names and attributes, and the cross-site decision, pure (profile_bff/cookies.py).
The routes that apply them are tested in tests/test_security_bff.py."""

from __future__ import annotations

import pytest

from profile_bff.cookies import CookieSpec, cross_site_refusal, device_cookie, refresh_cookie

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
