"""The fleet dashboard in headless Chromium (as tests/rest/test_rest_dashboard.py: Debian's
``chromium`` driven by playwright, skipped without them), against one real fleet process."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fleet_process import LINK_BANDWIDTH, FleetServer, start_fleet
from server_process import free_port
from test_rest_dashboard import (  # noqa: F401  (pytestmark: the same skip)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    pytestmark,
    watched_page,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    server = start_fleet(tmp_path_factory.mktemp("fleet-ui"))
    yield server
    server.stop()


def _post(http: httpx.Client, fleet: FleetServer, path: str, body: dict[str, object]) -> None:
    reply = http.post(path, headers=fleet.auth(), json=body)
    assert reply.status_code in (200, 201), reply.text


async def test_fleet_dashboard_follows_vms_and_migrations(fleet: FleetServer) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    http = fleet.client()
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await watched_page(browser, problems, height=900)
            await page.goto(fleet.base_url + "/")

            # The grid shows the fleet; the events panel opens with the history.
            tiles = page.locator("#grid .vm")
            await expect(tiles).to_have_count(3)
            await expect(page.locator('#grid .vm[data-vm="vm1"]')).to_have_attribute(
                "data-state", "running"
            )
            await expect(page.locator("#conn")).to_have_text("open")
            await expect(page.locator('#events li[data-event="FLEET_VM_ADDED"]')).to_have_count(3)
            await expect(page.locator("#link-bandwidth")).to_contain_text(LINK_BANDWIDTH)

            # A VM added over REST appears; one paused changes colour.
            _post(http, fleet, "/api/v1/vms", {"name": "src", "args": fleet.vm_args("src")})
            dst_args = fleet.vm_args("dst", "-incoming", "defer")
            _post(http, fleet, "/api/v1/vms", {"name": "dst", "args": dst_args})
            await expect(tiles).to_have_count(5)
            await expect(page.locator('#grid .vm[data-vm="dst"]')).to_have_attribute(
                "data-state", "inmigrate"
            )
            _post(http, fleet, "/api/v1/vms/vm2/qmp/stop", {})
            await expect(page.locator('#grid .vm[data-vm="vm2"]')).to_have_attribute(
                "data-state", "paused"
            )
            stop = page.locator('#events li[data-vm="vm2"][data-event="STOP"]')
            await expect(stop).to_have_count(1)

            # A migration inside the fleet: its row, then its downtime once completed.
            uri = f"tcp:127.0.0.1:{free_port()}"
            fast = {"max-bandwidth": 1 << 30}
            patched = http.patch("/api/v1/vms/src/parameters", headers=fleet.auth(), json=fast)
            assert patched.is_success
            _post(http, fleet, "/api/v1/vms/dst/qmp/migrate-incoming", {"uri": uri})
            _post(http, fleet, "/api/v1/vms/src/qmp/migrate", {"uri": uri})
            row = page.locator('#mig-table tr[data-vm="src"]')
            await expect(row).to_have_attribute("data-status", "completed", timeout=20_000)
            await expect(row.locator(".downtime")).to_have_text(re.compile(r"^\d+ ms$"))
            await expect(row.locator(".bar .text")).to_have_text("100.0 %")
            await expect(page.locator('#grid .vm[data-vm="src"]')).to_have_attribute(
                "data-state", "postmigrate"
            )
            await page.screenshot(path=str(ARTIFACTS / "fleet-dashboard.png"), full_page=True)

            # A removed VM disappears (and its migration row with it).
            assert http.delete("/api/v1/vms/src", headers=fleet.auth()).status_code == 204
            await expect(page.locator('#grid .vm[data-vm="src"]')).to_have_count(0)
            await expect(tiles).to_have_count(4)
            await expect(row).to_have_count(0)

            # A tile links to that VM's own dashboard, served under /api/v1/vms/NAME/.
            href = await page.locator('#grid .vm[data-vm="vm2"]').get_attribute("href")
            assert href == "/api/v1/vms/vm2/"
            vm_page = await watched_page(browser, problems, height=900)
            await vm_page.goto(fleet.base_url + href)
            await expect(vm_page.locator("#runstate")).to_have_text("paused")
            await expect(vm_page.locator("#vm-name")).to_have_text("vm2")
            await expect(vm_page.locator("#fleet-link")).to_be_visible()
            await expect(vm_page.locator("#conn")).to_have_text("open")
            await expect(vm_page.locator('#events li[data-event="STOP"]')).to_have_count(1)
        finally:
            await browser.close()
            http.close()
    assert not problems, problems
