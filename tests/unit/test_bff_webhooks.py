"""Alert webhooks' decisions (profile_bff/webhooks.py): the Stripe-style signature, which addresses a webhook
may reach (SSRF), and when an attempt is retried."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import pytest

from profile_bff.webhooks import address_allowed, decide, resolve_checked, signature, verify_signature, WebhookRefused


def test_the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body():
    body = b'{"type":"alert"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3cret", 1700000000, body) == f"t=1700000000,v1={expected}"


def test_a_receiver_accepts_the_signature_only_for_the_same_body_secret_and_a_recent_time():
    header = signature("s3cret", 1700000000, b"{}")
    assert verify_signature("s3cret", header, b"{}", now=1700000100)
    assert not verify_signature("s3cret", header, b"{ }", now=1700000100)
    assert not verify_signature("other", header, b"{}", now=1700000100)
    assert not verify_signature("s3cret", header, b"{}", now=1700001000)
    assert not verify_signature("s3cret", "v1=abc", b"{}", now=1700000000)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1", "192.0.2.1"],
)
def test_private_loopback_link_local_and_other_special_addresses_are_refused(address):
    assert not address_allowed(ipaddress.ip_address(address), ())


def test_global_addresses_pass_and_an_allow_list_admits_named_networks_only():
    assert address_allowed(ipaddress.ip_address("8.8.8.8"), ())
    assert address_allowed(ipaddress.ip_address("2606:4700::1111"), ())
    allowed = (ipaddress.ip_network("10.0.0.0/8"),)
    assert address_allowed(ipaddress.ip_address("10.9.9.9"), allowed)
    assert not address_allowed(ipaddress.ip_address("192.168.0.1"), allowed)


async def test_a_name_is_refused_if_any_address_it_resolves_to_is_refused():
    with pytest.raises(WebhookRefused, match="127.0.0.1"):
        await resolve_checked("localhost", 443, ())
    with pytest.raises(WebhookRefused):
        await resolve_checked("[::1]", 443, ())
    assert await resolve_checked("127.0.0.1", 443, (ipaddress.ip_network("127.0.0.1/32"),)) == [
        ipaddress.ip_address("127.0.0.1")
    ]


def test_attempts_are_retried_on_network_errors_timeouts_and_5xx_until_the_last_and_given_up_on_4xx():
    assert decide(204, 0, 8, "").state == "delivered"
    assert decide(None, 0, 8, "").state == "pending"
    assert decide(503, 6, 8, "").state == "pending"
    assert decide(503, 7, 8, "").state == "failed"
    assert decide(429, 0, 8, "").state == "pending"
    assert decide(404, 0, 8, "").state == "failed"
    assert decide(302, 0, 8, "").state == "failed"
    assert 0 <= decide(500, 3, 8, "").retry_in_s <= 8
