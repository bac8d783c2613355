"""The internal HTTP APIs (aggregator control, ETL) answer only a caller presenting their service credential.

The middleware of crypto_mesh.servicecreds is tested over real HTTP in a small app, then in the real aggregator
and ETL, and through their real callers: the BFF's AggregatorClient and `crypto-mesh sql`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support.credentials import service_headers, service_token_file
from support.stacks import serve_aggregator

from launcher.mesh import ensure_service_token
from launcher.settings import ETL_TOKEN_FILE, STATE_FILE
from crypto_mesh.candles import CandleRange
from support.ports import free_port
from crypto_mesh.secrets import random_token
from crypto_mesh.servicecreds import bearer_header, bearer_token_middleware, read_token, read_tokens
from etl.app import start as start_etl
from etl.settings import EtlSettings
from profile_bff.clients import AggregatorClient, AggregatorUnavailable, EtlClient
from profile_bff.errors import EtlUnavailable

CRYPTO_MESH = str(Path(sys.executable).parent / "crypto-mesh")
TIMEOUT = aiohttp.ClientTimeout(total=10)


async def request(method: str, url: str, headers: dict[str, str] | None = None, **kwargs):
    """``(status, headers, JSON body or text)`` of one request on a fresh session."""
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.request(method, url, headers=headers or {}, **kwargs) as response,
    ):
        text = await response.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return response.status, response.headers, body


def assert_refused(status, headers, body, *, presented: bool) -> None:
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert ('error="invalid_token"' in headers["WWW-Authenticate"]) is presented
    assert body["error"]["code"] == "unauthenticated"


# --- the middleware ------------------------------------------------------------------------------------------


@pytest.fixture
async def guarded(tmp_path):
    """A small app behind the middleware, accepting the two tokens of its file; yields (base URL, tokens)."""
    tokens = [random_token(), random_token()]
    token_file = tmp_path / "token"
    token_file.write_text("\n".join(tokens) + "\n")

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    app = web.Application(middlewares=[bearer_token_middleware(read_tokens(token_file), realm="test")])
    app.router.add_get("/v1/hello", hello)
    app.router.add_get("/healthz", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", tokens
    await runner.cleanup()


async def test_a_request_without_a_token_is_refused_with_a_bearer_challenge(guarded):
    base, _ = guarded
    assert_refused(*await request("GET", f"{base}/v1/hello"), presented=False)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-the-token", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer{token}", "{token}", "Bearer {token}x"],
)
async def test_a_wrong_or_malformed_credential_is_refused(guarded, authorization):
    base, tokens = guarded
    status, headers, body = await request(
        "GET", f"{base}/v1/hello", {"Authorization": authorization.format(token=tokens[0])}
    )
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_every_token_of_the_file_is_accepted_and_the_scheme_is_case_insensitive(guarded):
    base, tokens = guarded
    for authorization in (f"Bearer {tokens[0]}", f"Bearer {tokens[1]}", f"bearer {tokens[0]}"):
        status, _, body = await request("GET", f"{base}/v1/hello", {"Authorization": authorization})
        assert (status, body) == (200, {"hello": "world"})


async def test_the_health_route_is_open_to_probes(guarded):
    base, _ = guarded
    status, _, _ = await request("GET", f"{base}/healthz")
    assert status == 200


async def test_a_refusal_logs_the_request_but_never_the_presented_token(guarded, caplog, capsys):
    base, _ = guarded
    wrong = random_token()
    with caplog.at_level(logging.DEBUG):
        status, _, _ = await request("GET", f"{base}/v1/hello", {"Authorization": f"Bearer {wrong}"})
    assert status == 401
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    assert "service_credential_refused" in logged
    assert wrong not in logged


def test_a_token_file_without_a_token_is_refused_at_start_up(tmp_path):
    blank = tmp_path / "blank"
    blank.write_text("\n  \n")
    with pytest.raises(ValueError, match="no token|empty"):
        read_tokens(blank)
    with pytest.raises(ValueError):
        bearer_token_middleware([], realm="test")
    with pytest.raises(OSError):
        read_tokens(tmp_path / "missing")


def test_the_caller_presents_the_first_token_of_the_file(tmp_path):
    new, old = random_token(), random_token()
    token_file = tmp_path / "token"
    token_file.write_text(f"{new}\n{old}\n")
    assert read_token(token_file) == new
    assert bearer_header(new) == {"Authorization": f"Bearer {new}"}


# --- the aggregator's control API and the BFF's client -------------------------------------------------------


@pytest.fixture(scope="module")
async def aggregator(redis_url, kafka_bootstrap):
    """A real aggregator (its socket_proxy is not running: the control API does not need it), one for the
    module's tests, which only ask who may call it; yields its base URL."""
    async with serve_aggregator(redis_url, kafka_bootstrap, free_port()) as base:
        yield base


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/symbols/btcusdt/followers/user:1"),
        ("DELETE", "/v1/symbols/btcusdt/followers/user:1"),
        ("PUT", "/v1/followers/user:1"),
        ("GET", "/v1/symbols"),
        ("GET", "/v1/stats"),
        ("GET", "/metrics"),
    ],
)
async def test_every_aggregator_route_but_health_needs_the_service_credential(aggregator, method, path):
    assert_refused(*await request(method, f"{aggregator}{path}", json={"symbols": []}), presented=False)
    wrong = {"Authorization": f"Bearer {random_token()}"}
    assert_refused(*await request(method, f"{aggregator}{path}", wrong, json={"symbols": []}), presented=True)
    status, _, _ = await request(method, f"{aggregator}{path}", service_headers(), json={"symbols": []})
    assert status == 200


async def test_the_aggregator_health_route_answers_without_a_credential(aggregator):
    status, _, body = await request("GET", f"{aggregator}/healthz")
    assert status in (200, 503) and "status" in body  # answered by the handler, not refused


async def test_the_bff_client_tracks_symbols_with_its_token_and_is_refused_with_another(aggregator):
    client = AggregatorClient(aggregator, read_token(service_token_file()))
    try:
        await client.follow("btcusdt", 4242)
        await client.set_followed(4243, ["ethusdt", "btcusdt"])
    finally:
        await client.close()
    status, _, body = await request("GET", f"{aggregator}/v1/symbols", service_headers())
    assert status == 200
    assert {"symbol": "btcusdt", "followers": 2} in body["symbols"]
    assert {"symbol": "ethusdt", "followers": 1} in body["symbols"]

    impostor = AggregatorClient(aggregator, random_token())
    try:
        with pytest.raises(AggregatorUnavailable, match="401"):
            await impostor.follow("dotusdt", 4242)
    finally:
        await impostor.close()
    status, _, body = await request("GET", f"{aggregator}/v1/symbols", service_headers())
    assert status == 200
    assert "dotusdt" not in {entry["symbol"] for entry in body["symbols"]}


# --- the ETL's HTTP API and `crypto-mesh sql` ----------------------------------------------------------------


@pytest.fixture
async def etl_mesh(tmp_path, clickhouse_url):
    """A real ETL serving SQL, described as a running mesh in ``tmp_path`` (``mesh.json`` and the token file
    where ``crypto-mesh up`` puts them); yields (data dir, ETL base URL)."""
    token_file = ensure_service_token(tmp_path, ETL_TOKEN_FILE)
    running = await start_etl(
        EtlSettings(
            port=0,
            api_token_file=token_file,
            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            clickhouse_url=clickhouse_url,
        )
    )
    url = f"http://127.0.0.1:{running.port}"
    (tmp_path / STATE_FILE).write_text(json.dumps({"urls": {"etl": url}, "data_dir": str(tmp_path)}))
    yield tmp_path, url
    await running.stop()


async def test_the_etl_sql_route_needs_the_service_credential(etl_mesh):
    data_dir, url = etl_mesh
    query = {"query": "SELECT 1 AS one"}
    assert_refused(*await request("POST", f"{url}/v1/sql", json=query), presented=False)
    wrong = {"Authorization": f"Bearer {random_token()}"}
    assert_refused(*await request("POST", f"{url}/v1/sql", wrong, json=query), presented=True)
    right = bearer_header(read_token(data_dir / "secrets" / ETL_TOKEN_FILE))
    status, _, body = await request("POST", f"{url}/v1/sql", right, json=query)
    assert (status, body["rows"]) == (200, [[1]])
    status, _, _ = await request("GET", f"{url}/healthz")
    assert status in (200, 503)


async def test_the_bff_client_reads_candles_with_the_etls_token_and_is_refused_with_another(etl_mesh):
    data_dir, url = etl_mesh
    selection = CandleRange.of("1m")
    client = EtlClient(url, read_token(data_dir / "secrets" / ETL_TOKEN_FILE))
    try:
        page = await client.candles("btcusdt", selection)
    finally:
        await client.close()
    assert (page.candles, page.last_second_ms) == ([], None)
    for path in ("/v1/candles?symbol=btcusdt", "/v1/indicators?symbol=btcusdt&name=rsi"):
        assert_refused(*await request("GET", f"{url}{path}"), presented=False)

    impostor = EtlClient(url, random_token())
    try:
        with pytest.raises(EtlUnavailable, match="401"):
            await impostor.candles("btcusdt", selection)
    finally:
        await impostor.close()


def run_sql(data_dir: Path, query: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    return subprocess.run(
        [CRYPTO_MESH, "sql", query, "--format", "json"],
        env={**env, "MESH_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # the tests read the exit status
    )


async def test_crypto_mesh_sql_presents_the_token_of_the_mesh_data_directory(etl_mesh):
    data_dir, _ = etl_mesh
    # The ETL serves in this process's event loop: run the command without blocking it.
    result = await asyncio.to_thread(run_sql, data_dir, "SELECT 1 AS one")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"one": 1}]


async def test_crypto_mesh_sql_with_a_wrong_or_missing_token_is_a_one_line_refusal(etl_mesh):
    data_dir, _ = etl_mesh
    token_file = data_dir / "secrets" / ETL_TOKEN_FILE
    token_file.write_text(random_token())
    refused = await asyncio.to_thread(run_sql, data_dir, "SELECT 1")
    assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr
    token_file.unlink()
    missing = await asyncio.to_thread(run_sql, data_dir, "SELECT 1")
    assert missing.returncode == 1 and "service credential" in missing.stderr
    assert "Traceback" not in missing.stderr
