"""The status page: a server-rendered snapshot without JavaScript, and live in a real
headless Chromium (Debian's chromium and chromium-driver, driven by Selenium)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import free_port, require, upstream_toml, write_policies
from tests.support.tunable import TunableUpstream

ARTIFACTS = Path(__file__).parents[2] / "build" / "test-artifacts"
TOKEN = "page-token"
BREAKER = "\n[circuit_breaker]\nfailure_threshold = 3\n"


async def start(tmp_path: Path, nursery: trio.Nursery, running, *, token: bool) -> str:
    payments = await nursery.start(TunableUpstream("payments").serve)
    policies = write_policies(
        tmp_path / "policies",
        {
            "payments": upstream_toml("payments", payments, extra=BREAKER),
            "search": upstream_toml("search", "127.0.0.1:1"),
        },
    )
    if token:
        (policies / "admin-token").write_text(TOKEN)
        with (policies / "node.toml").open("a") as node:
            node.write('token_file = "admin-token"\n')  # the [admin] table is the last one
    _, addresses = await running(policies)
    return f"http://{addresses.admin[0]}"


async def test_the_snapshot_needs_no_javascript_and_nothing_from_elsewhere(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    admin = await start(tmp_path, nursery, running, token=False)
    async with httpx.AsyncClient(headers={"x-meshnode-admin": "1"}) as client:
        forced = await client.post(f"{admin}/admin/breakers/payments?state=open")
        assert forced.status_code == 200
        page = await client.get(f"{admin}/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        html = page.text
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert asset.startswith("/static/"), asset  # nothing from another origin
            assert (await client.get(f"{admin}{asset}")).status_code == 200
        assert '<noscript><meta http-equiv="refresh" content="10"></noscript>' in html
        payments = html[html.index('id="upstream-payments"') : html.index('id="upstream-search"')]
        assert 'data-breaker="open"' in payments
        assert '<span class="state state-open">OPEN</span>' in payments  # a word, not a colour
        assert "(forced open)" in payments
        assert "127.0.0.1:" in payments and "HEALTHY" in payments
        assert 'class="control breaker-controls" hidden' in payments  # read-only by default
        live = await client.get(f"{admin}/status/live")
        assert live.status_code == 200 and 'id="upstream-search"' in live.text

        (tmp_path / "policies" / "broken.toml").write_text("[upstream\n")
        assert (await client.post(f"{admin}/admin/reload")).status_code == 422
        html = (await client.get(f"{admin}/")).text
        assert '<span class="state state-rejected">REJECTED</span>' in html
        assert "broken.toml: TOML syntax" in html


def _browser(profile: Path, *flags: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = require("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *flags,
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(require("chromedriver")), options=options)


def _browse(admin: str, profile: Path) -> list[str]:
    """Everything a person would do, in a real browser; returns the event feed's lines."""
    browser = _browser(profile)
    # The live part is replaced every two seconds: an element found a moment ago may be gone.
    wait = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))

    def click(selector: str) -> None:
        def clicked(b: webdriver.Chrome) -> bool:
            button = b.find_element(By.CSS_SELECTOR, selector)
            if not button.is_displayed():
                return False
            button.click()
            return True

        wait.until(clicked)

    try:
        browser.set_window_size(1200, 1100)
        browser.get(admin + "/")
        wait.until(lambda b: "Connected" in b.find_element(By.ID, "feed-state").text)
        browser.execute_script("window.sameDocument = true")
        wait.until(
            lambda b: (
                (controls := b.find_elements(By.CSS_SELECTOR, ".breaker-controls button"))
                and not any(button.is_displayed() for button in controls)
            )
        )

        headers = {"Authorization": f"Bearer {TOKEN}", "x-meshnode-admin": "1"}
        httpx.post(
            f"{admin}/admin/breakers/payments?state=open", headers=headers
        ).raise_for_status()
        breaker = (By.CSS_SELECTOR, "#upstream-payments .breaker")
        wait.until(lambda b: "OPEN" in b.find_element(*breaker).text)
        assert browser.execute_script("return window.sameDocument") is True  # no reload
        wait.until(lambda b: "breaker-state-change" in b.find_element(By.ID, "events").text)

        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#unlock button").click()
        click('[data-breaker="payments"][data-state="closed"]')
        wait.until(
            lambda b: (
                "CLOSED" in (text := b.find_element(*breaker).text) and "forced closed" in text
            )
        )
        httpx.post(
            f"{admin}/admin/breakers/payments?state=open", headers=headers
        ).raise_for_status()
        wait.until(lambda b: "OPEN" in b.find_element(*breaker).text)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "status-page.png"))

        browser.set_window_size(390, 844)  # a phone: nothing wider than the screen
        wait.until(lambda b: b.execute_script("return innerWidth") <= 400)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        browser.save_screenshot(str(ARTIFACTS / "status-page-phone.png"))
        return browser.find_element(By.ID, "events").text.splitlines()
    finally:
        browser.quit()


async def test_the_page_follows_the_node_live_in_a_real_browser(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    admin = await start(tmp_path, nursery, running, token=True)
    feed = await trio.to_thread.run_sync(_browse, admin, tmp_path / "chromium-profile")
    assert any("breaker-state-change" in line and '"to":"open"' in line for line in feed)
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000


@pytest.fixture(autouse=True)
def _no_stale_artifacts() -> None:
    (ARTIFACTS / "status-page.png").unlink(missing_ok=True)


ATTACKER_PAGE = """<!doctype html><title>loading</title>
<iframe name="sink" hidden></iframe>
<form id="form" method="post" target="sink" enctype="text/plain"
      action="{admin}/admin/breakers/payments?state=open"><input name="a" value="b"></form>
<script>
const results = [];
document.getElementById("form").submit();
const posted = fetch("{admin}/admin/breakers/payments?state=open",
                     {{method: "POST", mode: "no-cors", body: "x"}})
  .then(() => "sent", () => "failed");
const socket = new Promise((resolve) => {{
  const ws = new WebSocket("{websocket}/admin/events");
  ws.onopen = () => resolve("opened");
  ws.onerror = () => resolve("refused");
}});
Promise.all([posted, socket]).then((done) => {{ document.title = done.join(" "); }});
</script>
"""


def _visit_the_attacker(attacker: str, admin: str, profile: Path) -> tuple[str, str]:
    """A page of another origin tries to change the node and follow its events; then the
    browser asks for the admin page under a name that resolves to loopback (DNS
    rebinding, with Chromium's resolver rules standing in for an attacker's DNS).
    Returns the attacker page's verdict and what the rebound name got."""
    browser = _browser(profile, "--host-resolver-rules=MAP rebind.meshnode.test 127.0.0.1")
    try:
        browser.get(attacker)
        WebDriverWait(browser, 15).until(lambda b: b.title != "loading")
        verdict = browser.title
        port = admin.rsplit(":", 1)[1]
        browser.get(f"http://rebind.meshnode.test:{port}/admin/upstreams")
        return verdict, browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.quit()


async def _listening(host: str, port: int) -> None:
    with trio.fail_after(10):
        while True:
            try:
                await (await trio.open_tcp_stream(host, port)).aclose()
                return
            except OSError:
                await trio.sleep(0.05)


async def test_another_sites_page_cannot_drive_the_node(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    """No token on the admin listener (loopback, the default): a page from any site the
    operator visits can still reach it. A cross-site form post, a no-cors fetch and a
    WebSocket from that page get nowhere, and neither does a rebound host name."""
    admin = await start(tmp_path, nursery, running, token=False)
    site = tmp_path / "attacker"
    site.mkdir()
    websocket = admin.replace("http://", "ws://")
    (site / "index.html").write_text(ATTACKER_PAGE.format(admin=admin, websocket=websocket))
    port = free_port()
    server = await trio.lowlevel.open_process(
        [sys.executable, "-m", "http.server", "-b", "127.0.0.2", "-d", str(site), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _listening("127.0.0.2", port)
        verdict, rebound = await trio.to_thread.run_sync(
            _visit_the_attacker, f"http://127.0.0.2:{port}/", admin, tmp_path / "profile"
        )
    finally:
        server.kill()
        await server.wait()
    assert verdict == "sent refused"  # the post went out, the socket did not open
    async with httpx.AsyncClient() as client:
        upstreams = (await client.get(f"{admin}/admin/upstreams")).json()
    assert upstreams["upstreams"]["payments"]["breaker"]["state"] == "closed"
    assert "rebind.meshnode.test" in rebound and "allowed_hosts" in rebound
