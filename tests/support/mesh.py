"""A whole mesh started as the README starts it (``crypto-mesh up`` in a child process), for the tests that
drive it from outside."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from support.ports import free_port, mesh_ports

#: The ``crypto-mesh`` command of the environment running the tests.
CRYPTO_MESH = str(Path(sys.executable).parent / "crypto-mesh")
READY_TIMEOUT_S = 180
#: The password of the users the mesh tests register.
PASSWORD = "correct horse battery staple"


@contextmanager
def running_mesh(data_dir: Path, **variables: str) -> Iterator[tuple[dict, dict, subprocess.Popen, Path]]:
    """`crypto-mesh up` in ``data_dir`` with ``variables`` (``MESH_*``) over the embedded defaults, until
    ready; yields (state dict, environment, process, log path). Stopped with SIGINT (Ctrl-C) unless already
    stopped."""
    env = {
        **os.environ,
        "MESH_DATA_DIR": str(data_dir),
        "MESH_BFF_PORT": str(free_port()),
        "MESH_PORTS": mesh_ports(),
        **variables,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([CRYPTO_MESH, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    state_file = data_dir / "mesh.json"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mesh did not become ready:\n{log_path.read_text()[-6000:]}")
        time.sleep(0.5)
    state = json.loads(state_file.read_text())
    yield state, env, process, log_path
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


async def register_and_login(http: aiohttp.ClientSession, bff: str, name: str) -> dict[str, str]:
    """Register ``name`` at the BFF ``bff`` and log in; returns the ``Authorization`` header of its access
    token."""
    credentials = {"name": name, "password": PASSWORD}
    status, text = await _post_as_a_client(http, f"{bff}/v1/register", credentials)
    assert status == 201, text
    status, text = await _post_as_a_client(http, f"{bff}/v1/login", credentials)
    assert status == 200, text
    body = json.loads(text)
    assert "refresh_token" not in body
    return {"Authorization": f"Bearer {body['access_token']}"}


#: How often a client retries a password check that auth shed under load (503 with Retry-After).
OVERLOAD_RETRIES = 5


async def _post_as_a_client(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, str]:
    """POST ``body`` as the documented client does: a 503 ``overloaded`` answer (auth sheds password checks it
    cannot finish in time, docs/CONTRACTS.md) is retried after its ``Retry-After``, up to
    :data:`OVERLOAD_RETRIES` times. Returns the last status and body."""
    for _attempt in range(OVERLOAD_RETRIES):
        async with http.post(url, json=body) as response:
            status, text = response.status, await response.text()
            retry_after = response.headers.get("Retry-After")
        if status != 503 or retry_after is None:
            break
        await asyncio.sleep(float(retry_after))
    return status, text
