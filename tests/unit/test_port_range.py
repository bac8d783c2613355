"""``MESH_PORTS``: a port range as FIRST-LAST."""

import pytest

from crypto_mesh.netutil import EPHEMERAL_PORTS_FILE, below_ephemeral_ports, parse_port_range
from launcher.settings import MeshSettings


def test_a_range_includes_both_ends():
    assert parse_port_range("20000-20002") == range(20000, 20003)
    assert parse_port_range(" 5-5 ") == range(5, 6)


@pytest.mark.parametrize("text", ["", "20000", "20000-", "a-b", "2-1", "0-10", "65000-65536", "1-2-3"])
def test_anything_else_is_refused_naming_the_text(text):
    with pytest.raises(ValueError, match="port range"):
        parse_port_range(text)


def test_the_mesh_setting_is_checked_when_read(monkeypatch):
    monkeypatch.setenv("MESH_PORTS", "30000-30099")
    assert MeshSettings().port_range == range(30000, 30100)
    monkeypatch.setenv("MESH_PORTS", "30099-30000")
    with pytest.raises(ValueError, match="port range"):
        MeshSettings()
    monkeypatch.delenv("MESH_PORTS")
    assert MeshSettings().port_range == below_ephemeral_ports()


def test_unset_the_mesh_takes_the_ports_just_below_the_ephemeral_ones(tmp_path):
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768\t60999\n")
    assert below_ephemeral_ports(str(proc)) == range(31768, 32768)
    proc.write_text("1500 60999\n")  # no room for 1,000 ports above 1024: what there is
    assert below_ephemeral_ports(str(proc)) == range(1024, 1500)
    proc.write_text("1024 60999\n")
    assert below_ephemeral_ports(str(proc)) is None
    proc.write_text("")
    assert below_ephemeral_ports(str(proc)) is None
    assert below_ephemeral_ports(str(tmp_path / "absent")) is None  # not Linux: the OS picks


def test_on_this_machine_the_default_range_lies_below_every_port_the_os_hands_out():
    ports = below_ephemeral_ports()
    if ports is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here")
    first_ephemeral = int(open(EPHEMERAL_PORTS_FILE).read().split()[0])
    assert len(ports) == 1000 and ports[-1] == first_ephemeral - 1
