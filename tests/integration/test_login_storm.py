"""A login storm through the BFF: what the password-hashing queue cannot check within its budget is answered
503 with ``Retry-After`` at once (refused before it is queued), while the logins it admits succeed.

Real auth gRPC server (bcrypt cost 11 on two hashing threads, so that a check takes a tenth of a second or
more and a burst of 60 overflows a two-second budget, on any machine) and a real BFF, with PostgreSQL and
Redis; the BFF's own login rate limits are raised out of the way so that every login reaches auth.
The decision itself: tests/test_auth_admission.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from support.bff import PASSWORD
from support.stacks import serve_auth, serve_bff

from support.ports import free_port

BURST = 60
UNLIMITED = "1000000/second"


@pytest.fixture
async def storm_stack(fresh_database, redis_url, tmp_path):
    """Auth checking passwords at bcrypt cost 11 on two hashing threads within a 2 s budget, its own login
    rate limits lifted, and a BFF with its rate limits lifted; yields (BFF URL, client session, auth)."""
    async with (
        serve_auth(
            fresh_database("auth"),
            tmp_path,
            bcrypt_cost=11,
            hash_queue_max_wait_s=2.0,
            hash_workers=2,
            login_rate_per_name=UNLIMITED,
            login_rate_per_name_and_address=UNLIMITED,
            login_rate_per_device=UNLIMITED,
        ) as auth,
        # Logins never call the aggregator.
        serve_bff(fresh_database("profile"), redis_url, auth.port, f"http://127.0.0.1:{free_port()}") as bff,
    ):
        yield bff.url, bff.http, auth


async def test_a_login_storm_is_answered_503_with_retry_after_at_once_while_admitted_logins_succeed(
    storm_stack,
):
    url, http, auth = storm_stack
    name = f"u{uuid.uuid4().hex[:12]}"
    async with http.post(f"{url}/v1/register", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 201, await resp.text()
    before = auth.service.password_checks.admitted

    async def login() -> tuple[int, dict, str | None]:
        async with http.post(f"{url}/v1/login", json={"name": name, "password": PASSWORD}) as resp:
            return resp.status, await resp.json(), resp.headers.get("Retry-After")

    answers = await asyncio.gather(*(login() for _ in range(BURST)))

    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) == {200, 503}, statuses
    for status, body, retry_after in answers:
        if status == 200:
            assert body["access_token"] and retry_after is None
        else:
            assert body["error"]["code"] == "overloaded"
            assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
    checks = auth.service.password_checks
    # Most refusals come before any queueing; a refusal after waiting would mean the estimate was wrong.
    assert checks.refused >= 1
    assert statuses[503] == checks.refused + checks.expired
    assert statuses[200] == checks.admitted - before - checks.expired


async def test_after_the_storm_the_retry_after_hint_leads_to_a_login(storm_stack):
    url, http, _ = storm_stack
    name = f"u{uuid.uuid4().hex[:12]}"
    async with http.post(f"{url}/v1/register", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 201

    async def login() -> tuple[int, str | None]:
        async with http.post(f"{url}/v1/login", json={"name": name, "password": PASSWORD}) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")

    answers = await asyncio.gather(*(login() for _ in range(BURST)))
    hints = [int(retry_after) for status, retry_after in answers if status == 503]
    assert hints, "the burst overflowed nothing"

    await asyncio.sleep(max(hints))
    # Alone on a drained queue the login is admitted; on a host busy enough that the check outlasts its
    # budget, the answer is another hint, which is followed in turn.
    for _ in range(5):
        status, retry_after = await login()
        if status != 503:
            break
        await asyncio.sleep(int(retry_after))
    assert status == 200
