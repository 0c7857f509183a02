"""The operator console in a real browser (Debian's headless Chromium driven by Playwright) against a real node whose
database holds a roll-out of 10,000 devices: sign in, find the failed ones, read why one failed, claim an unclaimed
device and watch its job run, edit a profile and upload an image; a read user is refused the actions, by the page and
by the server.

Each page is photographed on the way; ``CONSOLE_SCREENSHOTS=docs/console`` keeps the pictures there (the
documentation's), otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Error, Page, expect, sync_playwright

from pnp_integrated import create_app
from pnp_integrated.console.users import create_user
from pnp_integrated.devsim.node import RunningNode, node_settings
from pnp_integrated.devsim.pnp import DeviceReport, PnpAgent, SimulatedDevice
from tests.integration.console_fleet import Fleet, fill_fleet

CHROMIUM = "/usr/bin/chromium"
# Chromium's background services try to reach the internet; this machine's network is closed, so switch them off.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ADMIN, ADMIN_PASSWORD = "alice", "correct horse battery staple"
READER, READER_PASSWORD = "bob", "a long and readable passphrase"
WAIT = 60_000  # ms: a loaded machine may take long to run a device's whole day 0


@dataclass
class Console:
    node: RunningNode
    fleet: Fleet
    shots: Path

    def shoot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, node_launcher: Callable[..., RunningNode]) -> Console:
    root = tmp_path_factory.mktemp("console")
    fleet = fill_fleet(root / "data")
    app = create_app({**node_settings(root / "data"), "TESTING": True})
    with app.app_context():
        create_user(ADMIN, "admin", ADMIN_PASSWORD)
        create_user(READER, "read", READER_PASSWORD)
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return Console(node_launcher(root), fleet, shots)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise AssertionError("Chromium is missing: install the Debian package chromium (make test does)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser: Browser) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
    return context, context.new_page()


def goto(page: Page, url: str) -> None:
    """Open ``url``; again when Chromium saw the host's interfaces change meanwhile (the HA tests on this machine
    add and remove network namespaces) and dropped the navigation for it."""
    for attempt in range(3):
        try:
            page.goto(url)
            return
        except Error as exc:
            if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                raise


def sign_in(page: Page, console: Console, name: str, password: str, path: str = "/", tls: bool = False) -> None:
    goto(page, console.node.url(path, tls))
    expect(page.locator("h1")).to_have_text("PnP Gateway — sign in")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#signin")
    expect(page.locator("#operator")).to_contain_text(name)


def test_an_operator_finds_the_failed_devices_and_reads_why_one_failed(browser: Browser, console: Console) -> None:
    context, page = new_page(browser)
    goto(page, console.node.url("/"))
    expect(page.locator("#plain-http")).to_be_visible()  # a password over plain HTTP is said to be readable
    console.shoot(page, "signin")
    page.fill("#name", ADMIN)
    page.fill("#password", "not the password")
    page.click("#signin")
    expect(page.locator("#problem")).to_have_text("Wrong user name or password.")
    page.fill("#name", ADMIN)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("#signin")

    # The overview: the fleet's counts, and the chart drawn from the jobs in the database.
    fleet = console.fleet
    expect(page.locator("#count-total .n")).to_have_text("10,000")
    expect(page.locator("#count-failed .n")).to_have_text(f"{fleet.by_state['failed']:,}")
    expect(page.locator("#count-unclaimed .n")).to_have_text(f"{fleet.by_state['unclaimed']:,}")
    minutes = page.locator("#activity g.minute")
    expect(minutes).to_have_count(len({minute for minute, _ in fleet.ended}))
    busiest = max({m for m, _ in fleet.ended}, key=lambda m: fleet.ended[(m, "completed")])
    column = page.locator(f'#activity g.minute[data-minute="{busiest}"]')
    expect(column.locator("title")).to_have_text(
        f"{busiest[11:16]} UTC: {fleet.ended[(busiest, 'completed')]} completed, "
        f"{fleet.ended[(busiest, 'failed')]} failed")
    marks = page.locator("#activity g.transition")
    expect(marks).to_have_count(len(fleet.transitions))
    assert [marks.nth(i).get_attribute("data-state") for i in range(3)] == [s for _, s, _ in fleet.transitions]
    completed = sum(n for (_, state), n in fleet.ended.items() if state == "completed")
    expect(page.locator("#chart-summary")).to_contain_text(f"{completed:,} completed")
    console.shoot(page, "overview")

    # The failed ones, paged by the server: 50 of the fleet's failed devices, and the way to the next 50.
    page.click("#count-failed")
    expect(page.locator("#total")).to_have_text(f"{fleet.by_state['failed']:,}")
    rows = page.locator("#devices tbody tr")
    expect(rows).to_have_count(50)
    assert set(rows.locator("td:nth-child(5)").all_inner_texts()) == {"failed"}
    expect(page.locator("#next-page")).to_be_visible()
    console.shoot(page, "devices")
    page.click("#next-page")
    expect(page.locator("#page-summary")).to_contain_text(f"Devices 51 to 100 of {fleet.by_state['failed']:,}")
    second = rows.locator("td:nth-child(1)").all_inner_texts()
    assert fleet.by_state["failed"] > 150
    page.click("#next-page")
    expect(page.locator("#page-summary")).to_contain_text(f"Devices 101 to 150 of {fleet.by_state['failed']:,}")
    # ... and back, page by page, to the first.
    page.click("#previous-page")
    expect(page.locator("#page-summary")).to_contain_text(f"Devices 51 to 100 of {fleet.by_state['failed']:,}")
    assert rows.locator("td:nth-child(1)").all_inner_texts() == second
    page.click("#previous-page")
    expect(page.locator("#page-summary")).to_contain_text(f"Devices 1 to 50 of {fleet.by_state['failed']:,}")
    expect(page.locator("#previous-page")).to_have_count(0)

    # A search narrows it to one device; its page tells why it failed, in the device's words.
    serial = sorted(fleet.failed)[-1]
    page.fill("#search", serial.lower())
    page.click("#apply")
    expect(rows).to_have_count(1)
    page.click(f"text={serial}")
    expect(page.locator("#serial")).to_have_text(serial)
    expect(page.locator("#failure-text")).to_have_text(fleet.failed[serial])
    failed_step = page.locator('#timeline li[data-state="failed"]')
    expect(failed_step).to_have_attribute("data-step", "image")
    expect(failed_step.locator(".step-error")).to_have_text(fleet.failed[serial])
    # Admins see the configuration the device gets.
    expect(page.locator("#configuration pre")).to_contain_text(re.compile(f"^hostname (edge-)?{serial}$", re.M))
    expect(page.locator("#events")).to_contain_text("job.failed")
    console.shoot(page, "device")
    context.close()


def test_claiming_an_unclaimed_device_starts_its_job(browser: Browser, console: Console) -> None:
    device = SimulatedDevice(serial="CLAIM0001", pid="ISR1100-4G")  # no profile matches it
    reports: list[DeviceReport] = []
    agent = PnpAgent(device, console.node.url(""), time_scale=0.01, patience=10_000, deadline=600)
    runner = threading.Thread(target=lambda: reports.append(agent.run()), daemon=True)
    runner.start()

    context, page = new_page(browser)
    sign_in(page, console, ADMIN, ADMIN_PASSWORD)
    summary = page.locator("#chart-summary")
    before = int(re.search(r"([\d,]+) completed", summary.inner_text()).group(1).replace(",", ""))  # type: ignore[union-attr]
    overview = context.new_page()  # stays open on the overview, never reloaded
    goto(overview, console.node.url("/"))

    goto(page, console.node.url("/console/devices?state=unclaimed&search=CLAIM"))
    expect(page.locator("#devices tbody tr")).to_have_count(1, timeout=WAIT)  # it asked; nothing matched
    page.click("text=CLAIM0001")
    expect(page.locator("#device-state")).to_have_text("unclaimed")
    expect(page.locator("#no-job")).to_contain_text("claim it to a profile")
    page.select_option("#claim-profile", "edge")
    page.click("#claim")
    expect(page.locator("#notice")).to_contain_text("Claimed")
    expect(page.locator("#device-profile")).to_have_text("edge")
    # Without reloading, the page follows the job the device's next contact starts, step by step, to its end.
    expect(page.locator("#timeline li").first).to_have_attribute("data-step", "identify", timeout=WAIT)
    expect(page.locator("#job-state")).to_have_text("completed", timeout=WAIT)
    expect(page.locator("#device-state")).to_have_text("provisioned")
    expect(page.locator('#timeline li[data-step="config"]')).to_have_attribute("data-state", "succeeded")
    # ... and so does the overview's chart, from the job that just ended.
    expect(overview.locator("#chart-summary")).to_contain_text(f"{before + 1:,} completed", timeout=WAIT)
    runner.join(timeout=60)
    assert reports and reports[0].ok, reports
    console.shoot(page, "device-claimed")
    context.close()


def test_a_read_user_sees_no_actions_and_the_server_refuses_them(browser: Browser, console: Console) -> None:
    context, page = new_page(browser)
    sign_in(page, console, READER, READER_PASSWORD)
    serial = sorted(console.fleet.failed)[0]
    goto(page, console.node.url(f"/console/devices/{serial}"))
    expect(page.locator("#failure-text")).to_have_text(console.fleet.failed[serial])
    expect(page.locator("#actions")).to_have_count(0)
    expect(page.locator("#configuration")).to_have_count(0)
    goto(page, console.node.url("/console/profiles"))
    expect(page.locator("#new-profile")).to_have_count(0)
    goto(page, console.node.url("/console/profiles/branch"))
    expect(page.locator("#templates-hidden")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("ntp server")
    # The server refuses what the page does not offer, with this session's own valid CSRF token.
    token = page.locator("meta[name=csrf-token]").get_attribute("content") or ""
    unclaimed = console.fleet.unclaimed[0]
    answer = page.request.post(console.node.url(f"/console/devices/{unclaimed}/claim"),
                               form={"profile": "branch", "csrf_token": token})
    assert answer.status == 403 and "read role" in answer.text()
    goto(page, console.node.url(f"/console/devices/{unclaimed}"))
    expect(page.locator("#device-state")).to_have_text("unclaimed")
    context.close()


def test_the_session_cookie_and_csrf(browser: Browser, console: Console) -> None:
    context, page = new_page(browser)
    sign_in(page, console, ADMIN, ADMIN_PASSWORD)
    [cookie] = [c for c in context.cookies() if c["name"] == "pnp_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert page.evaluate("document.cookie").find("pnp_console=") == -1  # no script on the page can read it
    unclaimed = console.fleet.unclaimed[1]
    claim = console.node.url(f"/console/devices/{unclaimed}/claim")
    for form in ({"profile": "branch"}, {"profile": "branch", "csrf_token": "not-the-token"}):
        answer = page.request.post(claim, form=form)
        assert answer.status == 403 and "nothing was done" in answer.text(), form
    goto(page, console.node.url(f"/console/devices/{unclaimed}"))
    expect(page.locator("#device-state")).to_have_text("unclaimed")
    page.click("#signout")
    expect(page.locator("h1")).to_have_text("PnP Gateway — sign in")
    context.close()

    secure_context, secure_page = new_page(browser)
    sign_in(secure_page, console, ADMIN, ADMIN_PASSWORD, tls=True)
    expect(secure_page.locator("#plain-http")).to_have_count(0)
    [cookie] = [c for c in secure_context.cookies() if c["name"] == "pnp_console"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    secure_context.close()


def test_a_profile_is_validated_field_by_field_and_previewed_for_a_device(browser: Browser,
                                                                          console: Console) -> None:
    context, page = new_page(browser)
    sign_in(page, console, ADMIN, ADMIN_PASSWORD, "/console/profiles")
    page.click("#new-profile")
    page.fill("#name", "campus")
    page.fill("#match_pid", "re:C9[3-4")
    page.fill("#config_template", "hostname {{ serial }}\nsnmp-server location {{ site }\n")
    page.click("#save")
    expect(page.locator("#problem-match_pid")).to_contain_text("not a valid regular expression")
    page.fill("#match_pid", "C93*")
    page.click("#save")
    expect(page.locator("#problem-config_template")).to_have_text("configuration template line 2: unexpected '}'")
    console.shoot(page, "profile-invalid")
    page.fill("#config_template", "hostname {{ serial }}\nsnmp-server location {{ site }}\n")
    page.fill("#variables", '{"site": "ams1-b2"}')
    serial = sorted(console.fleet.failed)[0]
    page.fill("#preview_serial", serial)
    page.click("#preview")
    expect(page.locator("#preview-config_template")).to_have_text(
        f"hostname {serial}\nsnmp-server location ams1-b2\n")
    console.shoot(page, "profile")
    page.click("#save")
    expect(page.locator("#notice")).to_have_text("Profile created.")
    goto(page, console.node.url("/console/profiles"))
    expect(page.locator("#profiles")).to_contain_text("campus")
    console.shoot(page, "profiles")
    context.close()


def test_an_image_upload_shows_its_progress_and_md5(browser: Browser, console: Console,
                                                    tmp_path: Path) -> None:
    image = tmp_path / "c9300-universalk9.17.09.04a.SPA.bin"
    image.write_bytes(os.urandom(3 * 1024 * 1024))
    context, page = new_page(browser)
    sign_in(page, console, ADMIN, ADMIN_PASSWORD, "/console/images")
    page.set_input_files("#file", str(image))
    page.click("#upload")
    md5 = hashlib.md5(image.read_bytes()).hexdigest()
    expect(page.locator("#upload-status")).to_contain_text(f"MD5 {md5}", timeout=WAIT)
    expect(page.locator("#upload-progress")).to_have_attribute("value", "100")
    expect(page.locator(f'#images tr[data-image="{image.name}"] .md5')).to_have_text(md5)
    console.shoot(page, "images")
    page.reload()
    expect(page.locator(f'#images tr[data-image="{image.name}"] .md5')).to_have_text(md5)
    context.close()
