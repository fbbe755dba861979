"""The dashboard in a real headless Chromium against a real node process (one of each per module):
live rows, filters, detail, cancel, re-run, follow live, the task forms, keyboard use, and
screenshots of each page (written to docs/screenshots/ by `make screenshots`)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.api.http.browser import MISSING_PLAYWRIGHT, WAIT_MS, launched, opened
from tests.helpers import NodeProcess, open_path, script, start_node

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

expect = pytest.importorskip("playwright.async_api", reason=MISSING_PLAYWRIGHT).expect

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("node"), "--node-id", "dash-node")
    yield proc
    assert proc.stop() == 0, "\n".join(proc.output)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Functions the bundled tasks lack, where the function user can read them."""
    where = open_path(tmp_path_factory.mktemp("scripts"))
    script(where / "ticks.sh", '#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8; do echo "tick $i"; sleep 0.15; done\n')
    script(where / "binary.sh", "#!/bin/sh\nprintf '\\000\\001\\377'\n")
    script(where / "shout.sh", '#!/bin/sh\nread -r line\necho "$line" | tr a-z A-Z\n')
    return where


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched() as b:
        yield b


@pytest.fixture
async def api(node: NodeProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=30) as client:
        yield client


@pytest.fixture
async def page(browser: Browser, node: NodeProcess) -> AsyncIterator[Page]:
    async with opened(browser, node.http_url) as p:
        yield p


async def invoke(api: httpx.AsyncClient, task: str, mode: str = "SYNC", **body: Any) -> str:
    answer = await api.post(
        "/api/v1/invoke",
        json={"invocation_type": 2, "task_id": task, "execution_mode": f"EXECUTION_MODE_{mode}", **body},
    )
    assert answer.status_code == 200, answer.text
    execution_id: str = answer.json()["execution_id"]
    return execution_id


async def register(api: httpx.AsyncClient, name: str, location: Path) -> None:
    answer = await api.post(
        "/api/v1/tasks",
        json={
            "task_name": name,
            "replace": True,
            "artifact_spec": {"artifact_type": "process", "location": str(location)},
        },
    )
    assert answer.status_code in (200, 201), answer.text


def row(page: Page, execution_id: str) -> Any:
    return page.locator(f'#executions tr[data-id="{execution_id}"]')


async def live(page: Page, path: str) -> None:
    """Open a page of the dashboard and wait until its event stream is connected."""
    await page.goto(path)
    await expect(page.locator("#live")).to_have_attribute("data-state", "on", timeout=WAIT_MS)


async def test_a_just_invoked_execution_appears_live_without_reloading_the_page(
    page: Page, api: httpx.AsyncClient
) -> None:
    await live(page, "/#/executions")
    await page.evaluate("window.loadedOnce = true")  # gone if the page reloaded

    execution_id = await invoke(api, "greet", "ASYNC", parameters={"name": "Live"})

    await expect(row(page, execution_id)).to_be_visible(timeout=WAIT_MS)
    await expect(row(page, execution_id)).to_have_attribute("data-status", "COMPLETED", timeout=WAIT_MS)
    assert await page.evaluate("window.loadedOnce") is True
    assert await page.locator("#executions tbody tr").first.get_attribute("data-id") == execution_id


async def test_filtering_by_status_shows_only_executions_in_that_status(page: Page, api: httpx.AsyncClient) -> None:
    failed = await invoke(api, "fail")
    completed = await invoke(api, "hello", parameters={"name": "Ada"})
    await live(page, "/#/executions")
    await expect(row(page, completed)).to_be_visible(timeout=WAIT_MS)

    await page.get_by_label("Status").select_option("FAILED")

    await expect(row(page, failed)).to_be_visible(timeout=WAIT_MS)
    await expect(row(page, completed)).to_have_count(0)
    statuses = await page.locator("#executions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"FAILED"}
    assert "status=FAILED" in page.url
    live_failure = await invoke(api, "fail")  # live updates keep to the filter too
    await expect(row(page, live_failure)).to_be_visible(timeout=WAIT_MS)
    ignored = await invoke(api, "hello", parameters={"name": "not failed"})
    await page.reload()  # the filter is in the URL
    await expect(page.get_by_label("Status")).to_have_value("FAILED")
    await expect(row(page, live_failure)).to_be_visible(timeout=WAIT_MS)
    await expect(row(page, ignored)).to_have_count(0)


async def test_a_row_opens_the_detail_with_parameters_result_timings_and_log_tail(
    page: Page, api: httpx.AsyncClient
) -> None:
    execution_id = await invoke(api, "sleep", parameters={"seconds": 0.2})
    await live(page, "/#/executions")

    await row(page, execution_id).get_by_role("link", name=execution_id).click()

    await expect(page).to_have_url(re.compile(f"#/executions/{execution_id}$"))
    await expect(page.locator("#status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(page.locator("#parameters pre")).to_contain_text('"seconds": 0.2')
    await expect(page.locator("#result pre")).to_contain_text('"slept"')
    facts = page.locator("#facts")
    await expect(facts).to_contain_text("Attempts1")
    await expect(facts).to_contain_text("Nodedash-node")
    await expect(facts).to_contain_text("Queue wait")
    await expect(page.locator("#logs")).to_contain_text("slept 0.0 s")
    await expect(page.locator("#cancel")).to_be_disabled()


async def test_cancel_turns_a_running_execution_cancelled(page: Page, api: httpx.AsyncClient) -> None:
    execution_id = await invoke(api, "sleep", "ASYNC", parameters={"seconds": 60})
    await page.goto(f"/#/executions/{execution_id}")
    await expect(page.locator("#status [data-status]")).to_have_text("RUNNING", timeout=WAIT_MS)

    await page.get_by_role("button", name="Cancel").click()

    await expect(page.locator("#status [data-status]")).to_have_text("CANCELLED", timeout=WAIT_MS)
    await expect(page.locator("#action-status")).to_have_text("cancelled")
    record = (await api.get(f"/api/v1/executions/{execution_id}")).json()
    assert record["status"] == "CANCELLED"


async def test_rerun_starts_the_same_call_again_and_shows_it(page: Page, api: httpx.AsyncClient) -> None:
    first = await invoke(api, "hello", parameters={"name": "Again"})
    await page.goto(f"/#/executions/{first}")
    await expect(page.locator("#status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)

    await page.get_by_role("button", name="Re-run").click()

    await expect(page).not_to_have_url(re.compile(f"#/executions/{first}$"), timeout=WAIT_MS)
    second = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(page.locator("#parameters pre")).to_contain_text('"name": "Again"')
    await expect(page.locator("#result pre")).to_contain_text("Hello, Again!")
    record = (await api.get(f"/api/v1/executions/{second}", params={"include_params": "true"})).json()
    assert record["parameters"] == {"name": "Again"}


async def test_following_a_running_execution_shows_its_chunks_as_they_stream(
    page: Page, api: httpx.AsyncClient, scripts: Path
) -> None:
    await register(api, "ticks", scripts / "ticks.sh")
    execution_id = await invoke(api, "ticks", "ASYNC")

    await page.goto(f"/#/executions/{execution_id}")

    output = page.locator("#live-output")
    # The watch starts with the page: the ticks printed from then on, while it still runs.
    await expect(output).to_contain_text(re.compile(r"tick [1-7]\n"), timeout=WAIT_MS)
    assert await page.locator("#status [data-status]").text_content() == "RUNNING"
    await expect(page.get_by_role("button", name="Stop following")).to_be_visible()
    await expect(page.locator("#status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(output).to_contain_text("tick 8")
    await expect(output).to_contain_text("completed")


async def test_a_bytes_result_shows_as_base64_or_hex(page: Page, api: httpx.AsyncClient, scripts: Path) -> None:
    await register(api, "binary", scripts / "binary.sh")
    execution_id = await invoke(api, "binary")
    await page.goto(f"/#/executions/{execution_id}")
    result = page.locator("#result pre")
    await expect(result).to_have_text("AAH/", timeout=WAIT_MS)

    await page.locator("#result").get_by_label("hex").check()

    await expect(result).to_have_text("00000000  00 01 ff")


async def test_register_a_task_from_the_form_then_invoke_it_sync_and_async(
    page: Page, api: httpx.AsyncClient, scripts: Path
) -> None:
    await page.goto("/#/tasks")
    form = page.locator("#register")
    await form.get_by_label("Task name").fill("shout")
    await form.get_by_label("Runtime").select_option("process")
    await form.get_by_label("Artifact location").fill(str(scripts / "shout.sh"))
    await form.get_by_label("Settings").fill("timeout_ms = 5000")
    await form.get_by_label("Replace a task of this name").check()
    await form.get_by_role("button", name="Register").click()

    await expect(page).to_have_url(re.compile("#/tasks/shout$"), timeout=WAIT_MS)
    await expect(page.locator("#task-facts")).to_contain_text("timeout_ms5000")
    invoke_form = page.locator("#invoke-form")
    await invoke_form.get_by_label("Parameters (JSON object)").fill('{"word": "not json')
    await expect(page.locator("#params-error")).not_to_be_empty()
    await invoke_form.get_by_label("Parameters (JSON object)").fill('{"word": "hello"}')
    await invoke_form.get_by_role("button", name="Invoke").click()

    outcome = page.locator("#outcome")
    await expect(outcome.locator("[data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(outcome.locator("pre")).to_contain_text('"WORD": "HELLO"')
    await expect(page.locator("#executions tbody tr")).to_have_count(1, timeout=WAIT_MS)  # live in the recent list

    await invoke_form.get_by_label("async: follow it").check()
    await invoke_form.get_by_role("button", name="Invoke").click()
    await expect(page).to_have_url(re.compile("#/executions/[0-9a-f-]+$"), timeout=WAIT_MS)
    await expect(page.locator("#status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(page.locator("#facts")).to_contain_text("ModeASYNC")


async def test_the_tasks_page_lists_runtimes_settings_and_the_warm_pool(page: Page, api: httpx.AsyncClient) -> None:
    await invoke(api, "greet", parameters={"name": "warm"})
    await page.goto("/#/tasks")

    greet = page.locator('#tasks tr[data-task="greet"]')
    await expect(greet).to_contain_text("python", timeout=WAIT_MS)
    await expect(greet).to_contain_text("entry=greet:handler")
    await expect(greet).to_contain_text(re.compile(r"instances [1-9]\d* · idle \d+ · warm hits [1-9]"))


async def test_the_overview_shows_health_node_and_charts_of_what_finished(page: Page, api: httpx.AsyncClient) -> None:
    await invoke(api, "hello", parameters={"name": "chart"})
    await page.goto("/#/overview")

    await expect(page.locator("#health [data-status]")).to_have_text("healthy", timeout=WAIT_MS)
    await expect(page.locator("#node")).to_contain_text("dash-node")
    await expect(page.locator("#completed .value")).to_have_text(re.compile(r"^[1-9]"), timeout=WAIT_MS)
    await expect(page.locator("#node-name")).to_have_text("dash-node")
    charts = page.locator("figure.chart svg")
    await expect(charts).to_have_count(4)
    rate = await charts.first.get_attribute("aria-label")
    assert rate is not None and re.search(r"completed [\d.]+ /min \(peak [1-9][\d.]* /min\)", rate), rate
    await expect(page.locator("#cluster-title")).to_have_text("Single node")


async def test_the_keyboard_reaches_and_opens_executions(page: Page, api: httpx.AsyncClient) -> None:
    older = await invoke(api, "hello", parameters={"name": "k1"})
    newer = await invoke(api, "hello", parameters={"name": "k2"})
    await live(page, "/#/executions?task=hello")
    await expect(row(page, older)).to_be_visible(timeout=WAIT_MS)
    first_link = row(page, newer).get_by_role("link", name=newer)

    for _ in range(40):  # Tab through the header and the filters to the first row
        await page.keyboard.press("Tab")
        if await first_link.evaluate("el => el === document.activeElement"):
            break
    else:
        raise AssertionError("Tab never reached the first row")
    await page.keyboard.press("ArrowDown")
    await expect(row(page, older).get_by_role("link", name=older)).to_be_focused()
    await page.keyboard.press("Enter")

    await expect(page).to_have_url(re.compile(f"#/executions/{older}$"))
    await expect(page.locator("h1")).to_be_focused()


@pytest.mark.timeout(120)  # `make screenshots` first makes a minute of traffic for the charts
async def test_each_page_renders_dark_and_screenshots_are_taken(
    browser: Browser, node: NodeProcess, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Each page in the dark scheme (the other tests saw them light), a picture of each. With
    SPEARLET_SCREENSHOTS set (`make screenshots`), both schemes, written there for the README."""
    saving = os.environ.get("SPEARLET_SCREENSHOTS")
    target = Path(saving or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    if saving:  # a minute of varied traffic, for charts worth a picture
        for i in range(80):
            await invoke(api, "greet", parameters={"name": f"n{i}"})
            if i % 9 == 0:
                await invoke(api, "fail")
            await invoke(api, "sleep", "ASYNC", parameters={"seconds": (i % 7) / 10})
            await asyncio.sleep(0.4 if i % 40 < 20 else 0.1)
    for name in ("Ada", "Bo", "Cy"):
        await invoke(api, "greet", parameters={"name": name})
    await invoke(api, "fail")
    sample = await invoke(api, "greet", function_name="count", parameters={"n": 4})
    running = await invoke(api, "sleep", "ASYNC", parameters={"seconds": 30})
    pages = {
        "overview": ("/#/overview", "#health [data-status]"),
        "executions": ("/#/executions", f'tr[data-id="{running}"]'),
        "execution": (f"/#/executions/{sample}", "#result pre"),
        "tasks": ("/#/tasks", '#tasks tr[data-task="greet"]'),
        "task": ("/#/tasks/greet", "#executions tbody tr"),
    }
    try:
        for scheme in ("light", "dark") if saving else ("dark",):
            async with opened(browser, node.http_url, color_scheme=scheme) as shot:
                await shot.add_init_script("sessionStorage.setItem('spearlet.window', '300')")  # 5-minute charts
                for name, (path, ready) in pages.items():
                    await shot.goto(path)
                    await expect(shot.locator(ready).first).to_be_visible(timeout=WAIT_MS)
                    background = await shot.evaluate("getComputedStyle(document.body).backgroundColor")
                    assert (background == "rgb(15, 17, 21)") == (scheme == "dark"), background
                    if saving:
                        await shot.wait_for_timeout(500)  # the picture only: charts and rows settled
                    saved = target / f"{name}-{scheme}.png"
                    await shot.screenshot(path=str(saved))
                    assert saved.stat().st_size > 10_000  # a page, not a blank
    finally:
        await api.post(f"/api/v1/executions/{running}/cancel", json={})
