"""Small network helpers shared by the mesh launcher and the tests."""

from __future__ import annotations

import socket

#: The ports a browser refuses to fetch from (WHATWG Fetch standard, "port blocking", the bad-port
#: table; Chromium answers ``net::ERR_UNSAFE_PORT``). :class:`PortPicker` never hands one out, so any
#: server it places, such as the BFF of a mesh with ``MESH_PORTS``, can be opened in a browser.
BROWSER_BAD_PORTS = frozenset(
    {
        0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101,
        102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427,
        465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990,
        993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667,
        6668, 6669, 6679, 6697, 10080,
    }
)  # fmt: skip


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it; a race with another process is
    possible but unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


#: Where Linux says which ports it hands out to ``bind(0)`` and to outgoing connections (two numbers).
EPHEMERAL_PORTS_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
#: How many ports :func:`below_ephemeral_ports` gives.
BELOW_EPHEMERAL_PORTS = 1000


def below_ephemeral_ports(
    path: str = EPHEMERAL_PORTS_FILE, count: int = BELOW_EPHEMERAL_PORTS
) -> range | None:
    """The ``count`` ports just below the OS's ephemeral ports (from ``path``: ``32768-60999`` on Linux's
    defaults gives ``range(31768, 32768)``), never below 1024; None where the file cannot be read or leaves
    no room (another OS, an ephemeral range that starts low).

    A server's port picked there and not bound yet cannot be taken meanwhile by a connection another process
    opens, as a port of the ephemeral range can (its local end), which then holds it for as long as it lasts.
    """
    try:
        with open(path, encoding="ascii") as file:
            first = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    low = max(1024, first - count)
    return range(low, first) if low < first else None


def parse_port_range(text: str) -> range:
    """``"20000-20999"`` → ``range(20000, 21000)`` (both ends included, 1 ≤ first ≤ last ≤ 65535);
    ``ValueError`` naming the text otherwise."""
    first, sep, last = text.strip().partition("-")
    try:
        if not sep:
            raise ValueError
        low, high = int(first), int(last)
    except ValueError:
        raise ValueError(f"a port range is FIRST-LAST, e.g. 20000-20999, not {text!r}") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"a port range needs 1 <= FIRST <= LAST <= 65535, not {text!r}")
    return range(low, high + 1)


class PortPicker:
    """Free TCP ports of ``host`` for servers about to start, each port handed out once per pass.

    With ``ports`` None the OS picks each port (as :func:`free_port`, outside any range). With a range, the
    ports are taken in turn from it, skipping any that cannot be bound now or that a browser refuses
    (:data:`BROWSER_BAD_PORTS`), and each is handed out once before
    the range is gone through again; ``OSError`` when no port of the range is free. A range keeps a process's
    servers apart from the ports the OS hands out (``/proc/sys/net/ipv4/ip_local_port_range``), so that a
    port picked here and not bound yet cannot be given to another process's ``bind(0)`` or connection
    meanwhile.
    """

    def __init__(self, ports: range | None = None, host: str = "127.0.0.1") -> None:
        if ports is not None and len(ports) == 0:
            raise ValueError("an empty port range")
        self.ports = ports
        self.host = host
        self._next = 0

    def take(self) -> int:
        """A port free a moment ago (see the class)."""
        if self.ports is None:
            return free_port(self.host)
        for _ in range(len(self.ports)):
            port = self.ports[self._next]
            self._next = (self._next + 1) % len(self.ports)
            if _usable(self.host, port):
                return port
        raise OSError(f"no free port in {self.ports.start}-{self.ports.stop - 1} on {self.host}")

    def take_in_a_row(self, count: int) -> int:
        """A port ``p`` such that ``p`` to ``p + count - 1`` were all free a moment ago (the metrics ports of
        a service's worker processes, :mod:`crypto_mesh.workers`), handed out as :meth:`take` hands out one;
        ``OSError`` when none are found (100 tries without a range, one pass through the range with one)."""
        if count == 1:
            return self.take()
        tries = 100 if self.ports is None else len(self.ports)
        for _ in range(tries):
            base = self.take()
            if self.ports is not None and base + count > self.ports.stop:
                self._next = 0  # not enough room before the end of the range: go on from its start
                continue
            if self.ports is None and base + count - 1 > 65535:
                continue
            if all(_usable(self.host, port) for port in range(base + 1, base + count)):
                if self.ports is not None:
                    self._next = (self.ports.index(base) + count) % len(self.ports)
                return base
        raise OSError(f"no {count} free ports in a row on {self.host}")


def _usable(host: str, port: int) -> bool:
    """Whether ``host:port`` may be handed out: a port browsers accept, free now."""
    return port not in BROWSER_BAD_PORTS and _bindable(host, port)


def _bindable(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (the probe is released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
