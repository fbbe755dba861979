"""The dashboard of a node that has a token, in a real headless Chromium: it asks for the token,
refuses a wrong one, then works (event stream included) and keeps it for the tab's session only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.api.http.browser import MISSING_PLAYWRIGHT, WAIT_MS, launched, opened
from tests.helpers import NodeProcess, start_node

if TYPE_CHECKING:
    from playwright.async_api import Browser

expect = pytest.importorskip("playwright.async_api", reason=MISSING_PLAYWRIGHT).expect

pytestmark = pytest.mark.timeout(60)
TOKEN = "dashboard-secret-1"
# The browser reports each 401 the page met before the prompt; the page handles them.
REFUSED = ("Failed to load resource: the server responded with a status of 401",)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("node"), "--tasks", "none", env={"SPEARLET_TOKEN": TOKEN})
    yield proc
    assert proc.stop() == 0, "\n".join(proc.output)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched() as b:
        yield b


def test_pages_load_without_the_token_while_the_api_and_its_streams_need_it(node: NodeProcess) -> None:
    with httpx.Client(base_url=node.http_url, timeout=30) as http:
        assert http.get("/").status_code == 200
        assert http.get("/ui/js/api.js").status_code == 200
        for path in ("/api/v1/events", "/api/v1/timeseries", "/api/v1/pools", "/api/v1/cluster", "/api/v1/executions"):
            assert http.get(path).status_code == 401, path
        assert http.get("/api/v1/cluster", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


async def test_the_token_prompt_refuses_a_wrong_token_and_the_right_one_opens_the_dashboard(
    browser: Browser, node: NodeProcess
) -> None:
    async with opened(browser, node.http_url, allowed=REFUSED) as page:
        await page.goto("/#/overview")
        dialog = page.get_by_role("dialog", name="Sign in")
        await expect(dialog).to_be_visible(timeout=WAIT_MS)
        await expect(page.get_by_label("Access token")).to_be_focused()
        await page.keyboard.press("Escape")  # nothing works without it: the prompt stays
        await expect(dialog).to_be_visible()

        await page.get_by_label("Access token").fill("wrong")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("#login-error")).to_have_text("That token was not accepted.", timeout=WAIT_MS)
        assert await page.evaluate("sessionStorage.getItem('spearlet.token')") is None

        await page.get_by_label("Access token").fill(TOKEN)
        await page.keyboard.press("Enter")

        await expect(dialog).to_be_hidden(timeout=WAIT_MS)
        await expect(page.locator("#health [data-status]")).to_have_text("healthy", timeout=WAIT_MS)
        await expect(page.locator("#live")).to_have_attribute("data-state", "on", timeout=WAIT_MS)  # the stream too
        await page.reload()  # kept for this tab's session
        await expect(page.locator("#health [data-status]")).to_have_text("healthy", timeout=WAIT_MS)
        await expect(dialog).to_be_hidden()

        await page.get_by_role("button", name="Sign out").click()
        await expect(dialog).to_be_visible(timeout=WAIT_MS)
        assert await page.evaluate("sessionStorage.getItem('spearlet.token')") is None

    async with opened(browser, node.http_url, allowed=REFUSED) as other_tab:  # another session asks again
        await other_tab.goto("/#/tasks")
        await expect(other_tab.get_by_role("dialog", name="Sign in")).to_be_visible(timeout=WAIT_MS)
