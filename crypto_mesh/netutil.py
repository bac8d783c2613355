"""Small network helpers shared by the mesh launcher and the tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it; a race with another process is
    possible but unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports_in_a_row(count: int, host: str = "127.0.0.1") -> int:
    """A TCP port ``p`` on ``host`` such that ``p`` to ``p + count - 1`` were all free a moment ago (the
    metrics ports of a service's worker processes, :mod:`crypto_mesh.workers`); ``RuntimeError`` if 100
    tries find none."""
    for _ in range(100):
        base = free_port(host)
        if base + count - 1 > 65535:
            continue
        probes: list[socket.socket] = []
        try:
            for port in range(base + 1, base + count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.bind((host, port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return base
    raise RuntimeError(f"no {count} free ports in a row on {host}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
