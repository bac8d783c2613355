"""Exponential backoff with full jitter for the aggregator's long-lived connections.

The reconnect loops of the aggregator (gRPC streams, Redis publisher, Kafka producer) run forever and must
start again from a short delay once a connection has worked, which a one-shot retry decorator does not model;
this is the delay sequence they share. Full jitter (a uniform delay in ``[0, min(cap, base × 2^n)]``, AWS
Architecture Blog, "Exponential Backoff And Jitter") keeps many symbols' streams from reconnecting in step
when socket_proxy restarts.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays in seconds: ``next_delay()`` after each failure, ``reset()`` after a success.

    ``base_s`` is the cap of the first delay, ``max_s`` the cap of every delay.
    """

    def __init__(self, base_s: float = 0.1, max_s: float = 10.0) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError("need 0 < base_s <= max_s")
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the cap, up to ``max_s``."""
        cap = min(self.max_s, self.base_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(0, cap)

    def reset(self) -> None:
        """Start again from ``base_s`` (the connection worked)."""
        self.failures = 0
