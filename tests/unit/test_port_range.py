"""``MESH_PORTS``: a port range as FIRST-LAST."""

import pytest

from crypto_mesh.netutil import parse_port_range
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
    assert MeshSettings().port_range is None
