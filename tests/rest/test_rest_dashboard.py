"""The dashboard in headless Chromium (Debian's ``chromium`` package, driven by playwright).

Skipped when ``/usr/bin/chromium`` (or the playwright package) is missing.  Never runs
``playwright install``: the browser is the system one.  Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RestServer
from qemu.qmp import QMPClient
from server_process import ServerProcess, free_port

CHROMIUM = os.environ.get("QMP_SERVER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)), reason=f"{CHROMIUM} not installed"
)


async def watched_page(browser: Any, problems: list[str], height: int) -> Any:
    """A new page whose console errors, page errors and failed requests go to ``problems``."""
    page = await browser.new_page(viewport={"width": 1280, "height": height})
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    return page


async def test_dashboard_renders_and_follows_a_migration(
    rest_server: Callable[..., RestServer], qmp_server: Callable[..., ServerProcess]
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    source = rest_server("-m", "128M", "--guest-fill", "random", "--dirty-rate", "4M",
                         token=True)  # fmt: skip
    dest = qmp_server("-m", "128M", "-incoming", "defer")
    src, dst = QMPClient("src"), QMPClient("dst")
    await src.connect(source.socket)
    await dst.connect(dest.socket)
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await watched_page(browser, problems, height=1100)
            await page.goto(source.base_url + "/")
            expect = playwright_api.expect

            # The capability table, read-only until a token is given.
            caps = await src.execute("query-migrate-capabilities")
            await expect(page.locator("#caps tbody tr")).to_have_count(len(caps))
            events_box = page.locator('#caps tr[data-capability="events"] input')
            await expect(events_box).to_be_disabled()
            await expect(page.locator("#conn")).to_have_text("open")
            await expect(page.locator("#runstate")).to_have_text("running")

            # A token enables the toggles; a toggle really runs migrate-set-capabilities.
            await page.fill("#token", str(source.token))
            await page.click("#token-form button")
            await expect(events_box).to_be_enabled()
            await events_box.check()
            await expect(page.locator('#caps tr[data-capability="events"]')).to_contain_text("on")
            caps = await src.execute("query-migrate-capabilities")
            assert {"capability": "events", "state": True} in caps

            # A status change over QMP shows up through the event stream.
            await src.execute("stop")
            await expect(page.locator("#runstate")).to_have_text("paused")
            await src.execute("cont")
            await expect(page.locator("#runstate")).to_have_text("running")
            await expect(page.locator("#events li").first).to_contain_text("RESUME")

            # A migration started over QMP moves the progress bar to completion.
            await src.execute("migrate-set-parameters", {"max-bandwidth": 64 * MiB})
            uri = f"tcp:127.0.0.1:{free_port()}"
            await dst.execute("migrate-incoming", {"uri": uri})
            await src.execute("migrate", {"uri": uri})
            await expect(page.locator("#mig-status")).to_have_text("active", timeout=10_000)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-active.png"), full_page=True)
            await expect(page.locator("#mig-status")).to_have_text("completed", timeout=30_000)
            await expect(page.locator("#progress-text")).to_have_text("100.0 %")
            await expect(page.locator("#downtime")).not_to_have_text("–")
            await expect(page.locator("#runstate")).to_have_text("postmigrate")
            await expect(page.locator('#events li[data-event="MIGRATION"]').first).to_contain_text(
                "completed")
            passes = await page.locator('#events li[data-event="MIGRATION_PASS"]').count()
            assert passes >= 1
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            await browser.close()
            await src.disconnect()
            await dst.disconnect()
    assert not problems, problems
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_dashboard_drives_a_postcopy_pause_and_recovery(
    rest_server: Callable[..., RestServer], tmp_path: Path
) -> None:
    """Two dashboards, source and destination: switch, pause, recover, resume, blocktime."""
    playwright_api = pytest.importorskip("playwright.async_api")
    source = rest_server("-m", "64M", "--guest-fill", "random", token=True)
    dest = rest_server("-m", "64M", "-incoming", "defer", "--dirty-rate", "1M", token=True)
    src, dst = QMPClient("src"), QMPClient("dst")
    await src.connect(source.socket)
    await dst.connect(dest.socket)
    caps = [{"capability": c, "state": True} for c in ("events", "postcopy-ram")]
    await src.execute("migrate-set-capabilities", {"capabilities": caps})
    blocktime = [*caps, {"capability": "postcopy-blocktime", "state": True}]
    await dst.execute("migrate-set-capabilities", {"capabilities": blocktime})
    await src.execute("migrate-set-parameters", {"max-bandwidth": MiB,
                                                 "max-postcopy-bandwidth": MiB})  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = []
            for server in (source, dest):
                page = await browser.new_page(viewport={"width": 1280, "height": 1100})
                page.on("pageerror", lambda e: problems.append(str(e)))
                await page.goto(server.base_url + "/")
                await page.fill("#token", str(server.token))
                await page.click("#token-form button")
                pages.append(page)
            src_page, dst_page = pages
            expect = playwright_api.expect
            uri = f"unix:{tmp_path}/mig.sock"
            await dst.execute("migrate-incoming", {"uri": uri})
            await src.execute("migrate", {"uri": uri})
            await expect(src_page.locator("#mig-status")).to_have_text("active", timeout=10_000)

            # The source's button switches; both dashboards show postcopy.
            await src_page.click("#start-postcopy")
            for page in pages:
                await expect(page.locator("#mig-status")).to_have_text(
                    "postcopy-active", timeout=10_000)  # fmt: skip
            await expect(src_page.locator("#postcopy")).to_be_visible()
            await expect(src_page.locator("#postcopy-bytes")).not_to_have_text("–")
            await expect(src_page.locator("#start-postcopy")).to_be_hidden()

            # Pause from the source's dashboard: both sides paused, each with its hint.
            await src_page.click("#pause-postcopy")
            for page in pages:
                await expect(page.locator("#mig-status")).to_have_text(
                    "postcopy-paused", timeout=10_000)  # fmt: skip
                await expect(page.locator("#postcopy-hint")).to_be_visible()
            await expect(dst_page.locator("#postcopy-hint")).to_contain_text("exec-oob")
            await expect(dst_page.locator("#recover")).to_have_text("listen (migrate-recover)")
            await src_page.screenshot(path=str(ARTIFACTS / "dashboard-postcopy-paused.png"),
                                      full_page=True)  # fmt: skip

            # Recover: the destination listens first, then the source resumes.
            recover = f"unix:{tmp_path}/recover.sock"
            await dst_page.fill("#recover-uri", recover)
            await dst_page.click("#recover")
            await expect(dst_page.locator("#control-error")).to_be_hidden()
            await src_page.fill("#recover-uri", recover)
            await src_page.click("#recover")
            await expect(src_page.locator("#control-error")).to_be_hidden()
            await expect(src_page.locator("#mig-status")).to_have_text(
                "postcopy-active", timeout=10_000)  # fmt: skip
            await src.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 256 * MiB})
            for page in pages:
                await expect(page.locator("#mig-status")).to_have_text(
                    "completed", timeout=30_000)  # fmt: skip
            # The destination shows its blocktime once completed.
            await expect(dst_page.locator("#blocktime")).to_have_text(re.compile(r"^\d+ ms$"))
            await expect(dst_page.locator("#vcpu-blocktime")).to_have_text(
                re.compile(r"^\d+ ms$"))  # fmt: skip
            await dst_page.screenshot(path=str(ARTIFACTS / "dashboard-postcopy-dest.png"),
                                      full_page=True)  # fmt: skip
        finally:
            await browser.close()
            await src.disconnect()
            await dst.disconnect()
    assert not problems, problems


async def test_a_page_opened_late_shows_the_recent_events(
    rest_server: Callable[..., RestServer],
) -> None:
    """The events panel starts with the history: what happened before the page opened."""
    playwright_api = pytest.importorskip("playwright.async_api")
    server = rest_server("-m", "64M")
    qmp = QMPClient("late")
    await qmp.connect(server.socket)
    await qmp.execute("stop")
    await qmp.execute("cont")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(server.base_url + "/")
            expect = playwright_api.expect
            await expect(page.locator("#conn")).to_have_text("open")
            await expect(page.locator('#events li[data-event="STOP"]')).to_have_count(1)
            await expect(page.locator("#events li").first).to_contain_text("RESUME")
            await qmp.execute("stop")  # and it goes on live, without repeating the history
            await expect(page.locator('#events li[data-event="STOP"]')).to_have_count(2)
        finally:
            await browser.close()
            await qmp.disconnect()
