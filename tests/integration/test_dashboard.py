"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against a real node."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from pnp_integrated.devsim.node import PNPP, RunningNode
from pnp_integrated.devsim.pnp import SimulatedDevice, simulate
from tests.support import create_default_profile

CHROMIUM = "/usr/bin/chromium"
# Chromium's background services try to reach the internet; this machine's network is closed, so switch them off.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise AssertionError("Chromium is missing: install the Debian package chromium (make test does)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_dashboard_shows_the_status_rows_and_follows_a_provisioned_device(
    running_node: Callable[..., RunningNode], browser: Browser
) -> None:
    node = running_node()
    page = browser.new_page()
    page.goto(node.url("/"))
    # Serials and addresses are behind a token: the page first asks for one.
    expect(page.locator("h1")).to_have_text("PnP Gateway — sign in")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator("#problem")).to_contain_text("not valid")
    token = subprocess.run([PNPP, "token", "create", "--role", "read"], env=node.env, check=True,
                           capture_output=True, text=True).stdout.strip()
    page.fill("#token", token)
    page.click("button[type=submit]")

    services = page.locator("#services tbody tr")
    expect(services.filter(has_text="CNS Gateway port:")).to_have_count(10)
    expect(services.filter(has_text="CNS Gateway Dispatcher port:")).to_have_count(2)
    expect(services.filter(has_text="HTTPD")).to_have_count(2)
    expect(page.locator("#state")).to_have_text("ACTIVE")
    expect(page.locator("#devices tbody tr")).to_have_count(0)

    create_default_profile(node)
    [report] = simulate([SimulatedDevice(serial="DASH0001")], node.url(""), time_scale=0.01)
    assert report.ok, report

    # The page was not reloaded: its live refresh must bring the device and its finished job in.
    device_row = page.locator("#devices tbody tr", has_text="DASH0001")
    expect(device_row).to_have_count(1, timeout=10_000)
    expect(page.locator("#jobs tbody tr", has_text="DASH0001")).to_contain_text("done", timeout=10_000)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "pnp_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("#signout")
    expect(page.locator("h1")).to_have_text("PnP Gateway — sign in")
    page.close()
