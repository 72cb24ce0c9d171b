"""The web dashboard (``madrpc gateway``'s ``GET /``) in a real headless Chromium, driven by
Playwright, against a real broker, two workers and two gateways (one with API keys).

Skipped when Playwright or ``/usr/bin/chromium`` is missing, except on CI (``CI=true``),
where both must be there and their absence fails the module.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grid_support import (
    SIMPLE_JS,
    GridEndpoints,
    Proc,
    Spawner,
    metrics,
    scaled,
    wait_for_workers,
    wait_until,
)
from http_support import HttpGateway, start_gateway

from madrpc import Client

try:
    from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright
except ImportError:   # reported by MISSING
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
"""DESIGN.md §11: without the background-networking flags Chromium keeps trying hosts
this machine cannot reach."""
MISSING = ("Playwright for Python is not installed" if not HAVE_PLAYWRIGHT
           else f"{CHROMIUM} is missing (apt-get install chromium)" if not CHROMIUM.exists()
           else None)
ON_CI = os.environ.get("CI") == "true"
API_KEY = "dashboard-test-key-0123456789abcdef"
WAIT_MS = scaled(15) * 1000
"""How long an expectation on the page may take (the page polls once a second)."""

pytestmark = [
    pytest.mark.skipif(MISSING is not None and not ON_CI,
                       reason=f"browser tests of the dashboard need Playwright and Chromium: "
                              f"{MISSING}"),
    pytest.mark.timeout(scaled(60)),
]


@dataclass
class DashboardGrid:
    spawner: Spawner
    endpoints: GridEndpoints
    broker: Proc
    gateway: HttpGateway
    keyed: HttpGateway
    """A second gateway, with --api-keys."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}/"

    def worker_ids(self) -> set[str]:
        return {w["id"] for w in metrics(self.endpoints.frontend)["workers"]}

    def restart_broker(self) -> None:
        """A new broker on the same endpoints (the old one must be gone)."""
        self.broker = self.spawner.broker(self.endpoints)
        wait_for_workers(self.endpoints.frontend, 2)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardGrid]:
    """A broker, two workers of simple.js, a gateway, and a gateway that wants a key."""
    folder = tmp_path_factory.mktemp("dashboard")
    keys = folder / "api-keys"
    keys.write_text(f"# the dashboard test's key\n{API_KEY}\n")
    spawner = Spawner(folder)
    try:
        endpoints = spawner.endpoints()
        broker = spawner.broker(endpoints)
        for _ in range(2):
            spawner.worker(endpoints, SIMPLE_JS, 1)
        gateway = start_gateway(spawner, endpoints.frontend, wait=False)
        keyed = start_gateway(spawner, endpoints.frontend, "--api-keys", str(keys), wait=False)
        wait_for_workers(endpoints.frontend, 2)
        for each in (gateway, keyed):
            wait_for_gateway(each)
        yield DashboardGrid(spawner, endpoints, broker, gateway, keyed)
    finally:
        spawner.cleanup()


def wait_for_gateway(gateway: HttpGateway) -> None:
    wait_until(lambda: gateway.healthy() or not gateway.proc.alive(), 20, 0.05, "the gateway")
    assert gateway.proc.alive(), gateway.proc.stderr()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Chromium with a fresh profile, for the whole module."""
    if MISSING is not None:
        pytest.fail(f"CI=true and {MISSING}")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS, headless=True, viewport={"width": 1280, "height": 800})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        yield page
    finally:
        page.close()


def worker_rows(page: Page) -> Locator:
    return page.locator("table#workers tbody tr[data-worker-id]")


def column(page: Page, table: str, key: str) -> list[str]:
    """The raw values (``data-value``) of one column, top to bottom, read at one instant."""
    values: list[str] = page.eval_on_selector_all(
        f"table#{table} tbody tr", f"rows => rows.map(r => "
        f"r.querySelector('td[data-col=\"{key}\"]').dataset.value)")
    return values


def natural(text: str) -> list[Any]:
    """As the page orders names: numbers inside them by value (vm:99 before vm:100)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def click_sort(page: Page, table: str, key: str, direction: str) -> None:
    heading = page.locator(f"table#{table} th[data-sort=\"{key}\"]")
    heading.click()
    expect(heading).to_have_attribute("aria-sort", direction)
    expect(heading.locator(".arrow")).to_have_text("▲" if direction == "ascending" else "▼")


@pytest.fixture
def load(grid: DashboardGrid) -> Iterator[threading.Event]:
    """Calls to the grid from a thread until the test ends; the event is set once some
    have been answered."""
    answered, stop = threading.Event(), threading.Event()

    def drive() -> None:
        with Client(grid.endpoints.frontend, timeout=scaled(10)) as client:
            while not stop.is_set():
                client.map("slow_square", [[i, 2] for i in range(20)], max_in_flight=8)
                answered.set()

    thread = threading.Thread(target=drive, name="dashboard-load", daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(scaled(15))


def test_the_page_loads_without_console_errors_and_lists_both_workers(
        grid: DashboardGrid, page: Page) -> None:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(grid.url)
    expect(page).to_have_title("MaDRPC dashboard")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(worker_rows(page)).to_have_count(2)
    shown = set(worker_rows(page).evaluate_all("rows => rows.map(r => r.dataset.workerId)"))
    assert shown == grid.worker_ids()
    expect(page.locator("#total-workers")).to_have_text("2")
    expect(page.locator("#broker-endpoint")).to_have_text(grid.endpoints.frontend)
    expect(page.locator("table#methods tbody tr[data-method=\"add\"]")).to_have_count(1)
    expect(page.locator("#banner")).to_be_hidden()
    page.wait_for_timeout(1500)   # a poll or two more: errors from updates would show too
    assert problems == []


def test_req_per_s_rises_under_load(grid: DashboardGrid, page: Page,
                                    load: threading.Event) -> None:
    page.goto(grid.url)
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    assert load.wait(scaled(10)), "the load thread got no answers"
    page.wait_for_function(
        "() => Number(document.getElementById('req-rate').dataset.value) > 0",
        timeout=WAIT_MS)
    assert float(page.locator("#req-rate").get_attribute("data-value") or 0) > 0
    assert page.locator("#req-rate").inner_text() not in ("0", "–")
    page.wait_for_function(
        "() => (document.getElementById('rate-chart').dataset.points || '')"
        ".split(',').filter(Boolean).slice(-2).some(p => Number(p) > 0)", timeout=WAIT_MS)
    points = (page.locator("#rate-chart").get_attribute("data-points") or "").split(",")
    assert any(float(p) > 0 for p in points[-3:] if p), points


def test_clicking_a_heading_sorts_the_rows_and_clicking_again_reverses(
        grid: DashboardGrid, page: Page) -> None:
    page.goto(grid.url)
    expect(worker_rows(page)).to_have_count(2)

    click_sort(page, "workers", "id", "ascending")
    ids = column(page, "workers", "id")
    assert ids == sorted(ids, key=natural) and len(set(ids)) == 2
    click_sort(page, "workers", "id", "descending")
    assert column(page, "workers", "id") == ids[::-1]

    click_sort(page, "workers", "requests", "descending")   # figures: largest first
    requests = [float(v) for v in column(page, "workers", "requests")]
    assert requests == sorted(requests, reverse=True)
    click_sort(page, "workers", "requests", "ascending")
    requests = [float(v) for v in column(page, "workers", "requests")]
    assert requests == sorted(requests)

    click_sort(page, "methods", "name", "ascending")
    names = column(page, "methods", "name")
    assert names == sorted(names, key=natural) and "add" in names
    click_sort(page, "methods", "name", "descending")
    assert column(page, "methods", "name") == names[::-1]


def test_with_api_keys_the_page_asks_for_the_key_then_shows_the_grid(
        grid: DashboardGrid, page: Page) -> None:
    page.goto(f"http://127.0.0.1:{grid.keyed.port}/")
    form = page.locator("#key-form")
    expect(form).to_be_visible()
    expect(page.locator("#status")).to_have_attribute("data-state", "key")
    expect(worker_rows(page)).to_have_count(0)

    page.fill("#api-key", "not-the-right-key-0000000000")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-message")).to_contain_text("refused")
    expect(form).to_be_visible()

    page.fill("#api-key", API_KEY)
    page.click("#key-form button[type=submit]")
    expect(worker_rows(page)).to_have_count(2)
    expect(form).to_be_hidden()
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    assert page.evaluate("sessionStorage.getItem('madrpc.apiKey')") == API_KEY


def test_a_stopped_broker_shows_unreachable_until_a_broker_is_back(
        grid: DashboardGrid, page: Page) -> None:
    page.goto(grid.url)
    expect(worker_rows(page)).to_have_count(2)
    run = page.locator("#broker-run").inner_text()

    grid.broker.kill_group()
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Broker unreachable")
    assert page.locator("#banner-error").inner_text().strip()
    expect(page.locator("#banner-age")).to_contain_text(re.compile(r"last update \d+s ago"))
    expect(page.locator("#status")).to_have_attribute("data-state", "unreachable")
    expect(page.locator("body")).to_have_class(re.compile(r"\bstale\b"))
    expect(worker_rows(page)).to_have_count(2)   # the last data stays, greyed out

    grid.restart_broker()
    expect(banner).to_be_hidden()
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bstale\b"))
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator("#broker-run")).not_to_have_text(run)
    expect(worker_rows(page)).to_have_count(2)
