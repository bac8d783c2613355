"""Alert webhooks: each firing of a rule with a ``webhook_url`` is POSTed there, signed, retried with backoff,
and never sent to an address the mesh should not reach (docs/SECURITY.md, "Alert webhooks").

- Body: the alert JSON (:func:`profile_bff.alerts.alert_json`). Headers: ``Content-Type: application/json``,
  ``Crypto-Mesh-Alert-Id: <alert_id>`` (the same on every attempt: a receiver that stores the ids it has
  handled processes each firing once), and ``Crypto-Mesh-Signature: t=<unix s>,v1=<hex>`` where ``<hex>`` is
  HMAC-SHA256 (RFC 2104) under the rule's secret of ``"<t>.<body>"``, as Stripe signs its webhooks: the
  receiver recomputes it, compares in constant time, and refuses a ``t`` too far from its clock (replays).
- SSRF: the host is resolved, and EVERY address it resolves to must be a global unicast address, or lie in
  an operator's ``BFF_WEBHOOK_ALLOWED_NETWORKS``; otherwise the firing's webhook is given up. The connection is
  then made to those checked addresses only (:class:`PinnedResolver`), so a DNS answer that changes between
  the check and the connect (DNS rebinding) cannot point it elsewhere. TLS is verified for the URL's host.
- Retries: a network error, a timeout, 408, 429 or 5xx is tried again after :class:`crypto_mesh.retry.Backoff`'s
  delay for the attempts so far (1 s doubling, at most 5 min, full jitter), up to ``BFF_WEBHOOK_MAX_ATTEMPTS``;
  a 2xx is delivered; any other status is given up. Redirects are not followed.
- Several replicas: a due firing is claimed (its next attempt moved 60 s on, row locks skipped) before it is
  sent, so one replica sends each attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger
from crypto_mesh.retry import Backoff, raise_if_cancelling
from profile_bff.alerts import alert_json
from profile_bff.alertstore import AlertStore
from profile_bff.errors import StoreUnavailable

log = get_logger(__name__)

SIGNATURE_HEADER = "Crypto-Mesh-Signature"
ALERT_ID_HEADER = "Crypto-Mesh-Alert-Id"
#: Delays between attempts: 1 s doubling up to 5 min, full jitter.
RETRY_BACKOFF = Backoff(base_s=1.0, max_s=300.0)
#: How often the sender looks for due webhooks (s), and how many it takes at once.
POLL_S = 0.5
BATCH = 50

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookRefused(Exception):
    """The webhook's host resolves to an address the mesh must not call (or does not resolve)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Crypto-Mesh-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: int, tolerance_s: int = 300) -> bool:
    """What a receiver checks: the header's ``v1`` is the HMAC of ``t`` and ``body`` (compared in constant
    time) and ``t`` is within ``tolerance_s`` of ``now`` (Unix s)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = signature(secret, timestamp, body).partition(",v1=")[2]
    return abs(now - timestamp) <= tolerance_s and hmac.compare_digest(expected, fields.get("v1", ""))


def address_allowed(address: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    """Whether a webhook may connect to ``address``: a global unicast address (not private, loopback,
    link-local, multicast, reserved, unspecified, shared or documentation space; an IPv4-mapped IPv6 address
    is judged as its IPv4 address), or one inside an ``allowed`` network."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == network.version and address in network for network in allowed):
        return True
    return address.is_global and not address.is_multicast


async def resolve_checked(host: str, port: int, allowed: Sequence[IPNetwork]) -> list[IPAddress]:
    """The addresses of ``host`` (a name or a literal), each checked by :func:`address_allowed`; raises
    :class:`WebhookRefused` if it does not resolve or ANY address is refused."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise WebhookRefused(f"{host} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise WebhookRefused(f"{host} does not resolve")
    for address in addresses:
        if not address_allowed(address, allowed):
            raise WebhookRefused(f"{host} resolves to {address}, which webhooks may not reach")
    return addresses


class PinnedResolver(AbstractResolver):
    """An aiohttp resolver that answers the checked addresses and nothing else (the connection is pinned to
    what :func:`resolve_checked` allowed)."""

    def __init__(self, addresses: Sequence[IPAddress]) -> None:
        self._addresses = list(addresses)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self._addresses
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result: ``state`` ``delivered``, ``pending`` (retry in ``retry_in_s``) or ``failed``."""

    state: str
    detail: str
    retry_in_s: float | None = None


def decide(status: int | None, attempts_before: int, max_attempts: int, detail: str) -> Outcome:
    """The outcome of an attempt that got HTTP ``status`` (``None``: a network error or timeout), the firing
    having had ``attempts_before`` attempts (module docstring)."""
    if status is not None and 200 <= status < 300:
        return Outcome("delivered", detail)
    retryable = status is None or status in (408, 429) or status >= 500
    if not retryable or attempts_before + 1 >= max_attempts:
        return Outcome("failed", detail)
    return Outcome("pending", detail, RETRY_BACKOFF.delay_for(attempts_before))


class WebhookSender:
    """Sends due webhooks of ``store`` (module docstring) until cancelled: :meth:`run`. ``ssl_context``
    verifies the receivers' certificates (``BFF_WEBHOOK_CA_FILE`` or the system's CAs)."""

    def __init__(
        self,
        store: AlertStore,
        *,
        allowed: Sequence[IPNetwork] = (),
        timeout_s: float = 5.0,
        max_attempts: int = 8,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._store = store
        self._allowed = tuple(allowed)
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._ssl = ssl_context or ssl.create_default_context()
        self.delivered = 0

    async def run(self) -> None:
        """Poll for due webhooks every :data:`POLL_S` and send them, a batch at a time."""
        while True:
            try:
                due = await self._store.claim_webhooks(BATCH)
            except StoreUnavailable as exc:
                raise_if_cancelling()  # a driver may turn a cancellation into its own error
                log.warning("webhooks_poll_failed", error=str(exc))
                due = []
            if due:
                await asyncio.gather(*(self._send(firing, secret) for firing, secret in due))
            else:
                await asyncio.sleep(POLL_S)

    async def _send(self, firing: Any, secret: str | None) -> None:
        if secret is None or firing.webhook_url is None:
            outcome = Outcome("failed", "the rule was deleted")
        else:
            outcome = await self.attempt(firing.webhook_url, secret, firing.alert_id, alert_json(firing), firing.webhook_attempts)
        try:
            await self._store.webhook_outcome(firing.alert_id, outcome.state, outcome.retry_in_s)
        except StoreUnavailable as exc:
            log.warning("webhook_outcome_not_stored", alert_id=firing.alert_id, error=str(exc))
            return
        if outcome.state == "delivered":
            self.delivered += 1
        else:
            log.info("webhook_attempt_failed", alert_id=firing.alert_id, state=outcome.state, detail=outcome.detail)

    async def attempt(self, url: str, secret: str, alert_id: str, alert: dict[str, Any], attempts_before: int) -> Outcome:
        """POST ``alert`` to ``url`` once (SSRF-checked, signed, pinned); the :class:`Outcome`."""
        target = URL(url)
        assert target.host is not None
        try:
            addresses = await resolve_checked(target.host, target.port or 443, self._allowed)
        except WebhookRefused as exc:
            log.warning("webhook_refused", alert_id=alert_id, error=str(exc))
            return Outcome("failed", str(exc))
        body = jsonutil.dumps(alert)
        headers = {
            "Content-Type": "application/json",
            ALERT_ID_HEADER: alert_id,
            SIGNATURE_HEADER: signature(secret, int(time.time()), body),
        }
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(addresses), ssl=self._ssl, use_dns_cache=False)
        status: int | None = None
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_s)) as http,
                http.post(target, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                status = resp.status
                detail = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        return decide(status, attempts_before, self._max_attempts, detail)
