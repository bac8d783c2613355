"""Ports handed out for servers about to start: free ones of a range, each once per pass."""

import socket

import pytest

from crypto_mesh.netutil import BROWSER_BAD_PORTS, PortPicker
from support.ports import free_port


def held_range(size: int) -> range:
    """``size`` consecutive ports of this worker's range, none bound now and none a browser refuses: the
    picks are taken again until they are consecutive (the worker's picker skips a bound or refused port, such
    as 10080, and starts its range again at its end)."""
    while True:
        picks = [free_port() for _ in range(size)]
        if picks == list(range(picks[0], picks[0] + size)):
            return range(picks[0], picks[0] + size)


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


def test_ports_in_a_row_skip_a_block_with_a_bound_port():
    ports = held_range(6)
    with socket.socket() as server:
        server.bind(("127.0.0.1", ports[1]))
        server.listen()
        picker = PortPicker(ports)
        assert picker.take_in_a_row(3) == ports[2]  # ports[0] has ports[1] bound after it
        assert picker.take() == ports[5]  # the block is handed out whole
        assert picker.take_in_a_row(3) == ports[2]  # a new pass: the only free block of three again


def test_without_a_range_ports_in_a_row_are_picked_by_the_os():
    first = PortPicker().take_in_a_row(2)
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", first))
        b.bind(("127.0.0.1", first + 1))


def test_a_port_browsers_refuse_is_never_handed_out():
    # 10080 is on the Fetch standard's bad-port list: a BFF there cannot be opened in Chromium (ERR_UNSAFE_PORT)
    assert 10080 in BROWSER_BAD_PORTS
    with pytest.raises(OSError, match="no free port in 10080-10080"):
        PortPicker(range(10080, 10081)).take()
    with pytest.raises(OSError, match="no 2 free ports in a row"):
        PortPicker(range(10079, 10082)).take_in_a_row(2)  # each pair of the range holds 10080
