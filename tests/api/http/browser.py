"""A real headless Chromium for the dashboard's tests: the system's (Debian's `chromium`, which
`make setup` installs), driven by Playwright, which downloads no browser of its own here."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

# Headless, as root (hence no sandbox of Chromium's own), and quiet: nothing reaches the internet.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING_PLAYWRIGHT = "the playwright package is missing: `make setup` installs the dev dependencies"
# Long enough for a loaded machine; a condition, never a sleep.
WAIT_MS = 15_000


def chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


@contextlib.asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    """A browser for a module's tests (Playwright gives it a fresh profile directory); skips, saying
    why, when none can be had. Each test opens a context of its own: cookies and storage apart."""
    path = chromium()
    if path is None:
        pytest.skip("no Chromium on this machine: `make setup` installs Debian's chromium (as root, with apt-get)")
    async_playwright = pytest.importorskip("playwright.async_api", reason=MISSING_PLAYWRIGHT).async_playwright
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def opened(
    browser: Browser, base_url: str, color_scheme: str = "light", allowed: tuple[str, ...] = ()
) -> AsyncIterator[Page]:
    """A page in a context of its own (storage apart). The test fails if the page raised a script
    error or logged one, but for messages that start with one of `allowed`."""
    context = await browser.new_context(
        base_url=base_url,
        viewport={"width": 1280, "height": 860},
        color_scheme=color_scheme,  # type: ignore[arg-type]
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"script error: {error}"))
    page.on(
        "console", lambda m: errors.append(m.text) if m.type == "error" and not m.text.startswith(allowed) else None
    )
    try:
        yield page
    finally:
        await context.close()
    assert not errors, errors
