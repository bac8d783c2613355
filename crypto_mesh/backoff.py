"""Exponential backoff with full jitter for the services' long-lived connections.

Reconnect loops (the aggregator's gRPC streams, Redis publisher and Kafka producer; socket_proxy's upstream
websockets) run forever and must start again from a short delay once a connection has worked, which a one-shot
retry decorator such as tenacity's does not model; this is the delay sequence they share. Full jitter (a uniform delay in ``[0, min(cap, base × 2^n)]``, AWS
Architecture Blog, "Exponential Backoff And Jitter") keeps many symbols' streams from reconnecting in step
when their upstream restarts.
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

    def delay_for(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failures (0-based): uniform in ``[0, min(max_s, base_s × 2^n)]``."""
        return random.uniform(0, min(self.max_s, self.base_s * 2 ** min(failures, 32)))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the cap, up to ``max_s``."""
        delay = self.delay_for(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Start again from ``base_s`` (the connection worked)."""
        self.failures = 0
