"""Ports handed out for servers about to start: free ones of a range, each once per pass."""

import socket

import pytest

from crypto_mesh.netutil import PortPicker
from support.ports import free_port


def held_range(size: int) -> range:
    """``size`` consecutive ports of this worker's range, none bound now."""
    first = free_port()
    for _ in range(size - 1):
        free_port()
    return range(first, first + size)


def test_each_port_is_handed_out_once_per_pass_and_a_bound_one_is_skipped():
    ports = held_range(3)
    with socket.socket() as server:
        server.bind(("127.0.0.1", ports[1]))
        server.listen()
        picker = PortPicker(ports)
        assert [picker.take(), picker.take()] == [ports[0], ports[2]]
        assert picker.take() == ports[0]  # the second pass


def test_a_range_with_no_free_port_is_an_error_naming_it():
    ports = held_range(2)
    servers = [socket.socket() for _ in ports]
    try:
        for server, port in zip(servers, ports):
            server.bind(("127.0.0.1", port))
        with pytest.raises(OSError, match=f"no free port in {ports[0]}-{ports[-1]}"):
            PortPicker(ports).take()
    finally:
        for server in servers:
            server.close()


def test_without_a_range_the_os_picks():
    port = PortPicker().take()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
