"""Ports for the servers a test starts, kept apart between the processes of one test run.

The suite runs on several pytest-xdist workers at once. A port picked by ``bind(0)`` and released until the
server binds it could meanwhile be handed by the OS to another worker's ``bind(0)`` (every service started
with port 0) or to a connection. So each worker takes its ports from ranges of its own below the OS's
ephemeral ports (32768-60999 on Linux): :func:`free_port` for the test's own servers, :func:`mesh_ports`
(``MESH_PORTS``) for the meshes ``crypto-mesh up`` starts in a child process. Within a worker a port is handed
out once per pass through its range (:class:`crypto_mesh.netutil.PortPicker`).
"""

from __future__ import annotations

import os

from crypto_mesh.netutil import PortPicker

#: Ports of worker ``i``: ``BASE + i * WIDTH`` on, the first ``TEST_PORTS`` for the tests' own servers, the
#: rest for meshes. Four workers fit below 32768.
BASE, WIDTH, TEST_PORTS = 10_000, 5_000, 3_000


def worker_index() -> int:
    """0 for pytest-xdist's ``gw0`` (or a run without xdist), 1 for ``gw1``, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(name.removeprefix("gw"))
    if BASE + (index + 1) * WIDTH > 32768:
        raise RuntimeError(f"too many pytest-xdist workers for the port ranges of tests/support/ports.py: {name}")
    return index


_first = BASE + worker_index() * WIDTH
_picker = PortPicker(range(_first, _first + TEST_PORTS))


def free_port() -> int:
    """A TCP port of 127.0.0.1, free a moment ago, of this worker's own range."""
    return _picker.take()


def mesh_ports() -> str:
    """``MESH_PORTS`` for the meshes this worker starts (``FIRST-LAST``)."""
    return f"{_first + TEST_PORTS}-{_first + WIDTH - 1}"
