"""The BFF's OpenAPI 3.1 document: it names exactly the routes the app serves, and schemathesis, generating
requests from it against a real BFF (real auth, PostgreSQL, Redis), never gets a 5xx.

schemathesis runs as its CLI (``st run``) in a subprocess, bounded to a few examples per operation, since the
BFF under test runs in this test's event loop.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from jsonschema.validators import Draft202012Validator
from support.stacks import serve_etl, serve_stack

from profile_bff.app import create_app
from profile_bff.openapi import openapi_document


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, tmp_path_factory, kafka_bootstrap):
    """Auth, the fake aggregator, an ETL (for the market history) and a BFF shared by this module's tests
    (each uses new users)."""
    async with (
        serve_etl(kafka_bootstrap, tmp_path_factory.mktemp("openapi") / "chdb") as etl,
        serve_stack(postgres, redis_url, tmp_path_factory, etl_url=f"http://127.0.0.1:{etl.port}") as running,
    ):
        yield running


#: Methods every aiohttp GET route also answers (HEAD is added by ``add_get``) and is not documented apart.
_IMPLICIT = {"HEAD"}


def served_routes(bff) -> set[tuple[str, str]]:
    """The routes of the application of a running BFF."""
    app = create_app(bff.running.service)
    return {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.method not in _IMPLICIT
    }


def documented_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, item in openapi_document()["paths"].items() for method in item}


async def test_every_served_route_is_documented_and_every_documented_route_is_served(bff):
    assert served_routes(bff) == documented_routes()


def test_the_document_is_openapi_3_1_whose_schemas_are_valid_json_schema():
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


async def test_the_served_document_is_the_module_document(bff):
    async with bff.http.get(f"{bff.url}/openapi.json") as resp:
        assert resp.status == 200
        assert await resp.json() == openapi_document()


async def test_schemathesis_generated_requests_never_get_a_server_error(bff, tmp_path):
    _, auth = await bff.user()
    st = Path(sys.executable).with_name("st")
    process = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{bff.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "20",
        "--seed",
        "20261121",
        "--phases",
        "examples,coverage,fuzzing",
        "--header",
        f"Authorization:{auth['Authorization']}",
        # Deleting the profile would log the generated requests out halfway; its own tests cover it.
        "--exclude-name",
        "DELETE /v2/user/profile",
        "--request-timeout",
        "10",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    report = output.decode("utf-8", "replace")
    assert process.returncode == 0, report[-4000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", report)
    assert summary is not None and int(summary.group(1)) == int(summary.group(2)) > 100, report[-4000:]
    # Every selected operation (all but DELETE /v2/user/profile) was exercised.
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    assert selected is not None and int(selected.group(1)) == int(selected.group(2)) - 1, report[-4000:]
    assert f"Tested: {selected.group(1)}" in report, report[-4000:]
