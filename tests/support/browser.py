"""A real browser for the dashboard's tests: Debian's ``chromium`` driven by Playwright for Python, and a
screenshot of every step of a test, kept when the test fails.

Playwright cannot download its own browser builds here, so it drives the executable Debian's ``chromium``
package installs (``.ci/run`` installs the package when it is missing): :data:`CHROMIUM`, or the one
``DASHBOARD_CHROMIUM`` names.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = Path(os.environ.get("DASHBOARD_CHROMIUM", "/usr/bin/chromium"))


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Debian chromium (:data:`CHROMIUM`); fails the test, saying how to install it, when it is
    not there."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            await browser.close()


class Steps:
    """Screenshots of a test's steps, ``NN-<step>.png`` in ``directory``: :meth:`step` takes one after each
    step, and one named ``failed`` when a step raises. :meth:`discard` deletes them (the test passed); after a
    failure they stay where the failure message says."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self._count = 0

    @asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        """Run the ``async with`` body as step ``name``, then take its screenshot."""
        self._count += 1
        slug = f"{self._count:02d}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        try:
            yield
        except BaseException:
            path = self.directory / f"{slug}-failed.png"
            await self.page.screenshot(path=path, full_page=True)
            print(f"step {name!r} failed; screenshots of every step in {self.directory}")
            raise
        await self.page.screenshot(path=self.directory / f"{slug}.png", full_page=True)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
