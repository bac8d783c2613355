"""The BFF's OpenAPI 3.1 document: it names exactly the routes the app serves, and schemathesis, generating
requests from it against a real BFF (real auth, PostgreSQL, Redis), finds every answer as the document says
with all its checks: no 5xx, documented status codes, content types, response schemas and headers, valid
requests accepted and invalid ones refused, authentication enforced.

schemathesis runs as its CLI (``st run``) in a subprocess, bounded to a few examples per operation with a fixed
seed and ASCII strings (a password's limit is 72 bytes, which JSON Schema can only count in characters), since
the BFF under test runs in this test's event loop. tests/integration/schemathesis.toml lists the operations
that refuse some schema-valid requests for reasons JSON Schema cannot state, and why.
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
from profile_bff.openapi import OPERATIONS, openapi_document

pytestmark = pytest.mark.heavy


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


def test_every_operation_has_a_unique_operation_id_and_a_tag():
    operations = [
        operation for item in openapi_document()["paths"].values() for operation in item.values()
    ]
    ids = [operation["operationId"] for operation in operations]
    assert len(set(ids)) == len(ids) == len(OPERATIONS)
    tags = {tag["name"] for tag in openapi_document()["tags"]}
    assert all(len(operation["tags"]) == 1 and operation["tags"][0] in tags for operation in operations)


async def test_every_answer_carries_the_documented_request_id_header(bff):
    async with bff.http.post(f"{bff.url}/v1/auth/logout") as resp:
        assert resp.status == 204
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", resp.headers["X-Request-Id"])
    assert openapi_document()["paths"]["/v1/auth/logout"]["post"]["deprecated"] is True


async def test_schemathesis_finds_every_answer_as_the_document_says(bff, tmp_path):
    _, auth = await bff.user()
    st = Path(sys.executable).with_name("st")
    process = await asyncio.create_subprocess_exec(
        str(st),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{bff.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "10",
        "--seed",
        "20261121",
        "--generation-codec",
        "ascii",
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
    assert process.returncode == 0, report[-6000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", report)
    assert summary is not None and int(summary.group(1)) == int(summary.group(2)) > 500, report[-6000:]
    # Every selected operation (all but DELETE /v2/user/profile) was exercised.
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    assert selected is not None and int(selected.group(1)) == int(selected.group(2)) - 1, report[-6000:]
    assert f"Tested: {selected.group(1)}" in report, report[-6000:]
