"""The web console in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium), against real router nodes and agents over TLS on 127.0.0.1.

A master with a real router agent (agent1), a scripted agent sending check results over
TLS (agent2) and one configured agent that never comes (agent3): the rendered page lists
every endpoint, marks agent3 disconnected (and says so in the problems banner), its
figures move between two samples, search narrows the table, and the browser logs no
JavaScript error. A screenshot is kept (``$ROUTER_TEST_ARTIFACTS`` or tmp_path).

Signing: an anonymous client with a CSR and no ticket leaves a pending request; with the
admin token entered in the console, its Sign button signs it and the waiting client gets
its certificate (pki::UpdateCertificate).

Slow tier: a satellite with 5 000 configured agents (router perf's emulated agents,
most of them connected); the time until the page is interactive and a search answers
is measured and printed, never asserted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from router import pki as pkilib
from tests.browserutil import ClusterLoop, artifact_dir, browser, javascript_errors, wait_for
from tests.nodeutil import ClusterSpec, FakePeer, check_result, http_get, wait_until
from tests.pkiutil import make_test_pki

TOKEN = "console-test-token-0123456789"


def rows(driver) -> dict[str, str]:
    """Endpoint table rows shown: name -> state (up/down)."""
    return driver.execute_script(
        "const out = {}; for (const tr of document.querySelectorAll('#endpoints tbody tr'))"
        " { if (tr.dataset.name) out[tr.dataset.name] = tr.dataset.state; } return out;")


def open_console(driver, port: int) -> None:
    driver.get(f"http://127.0.0.1:{port}/")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready === '1'"),
             what="the console's first render")


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = artifact_dir(tmp_path) / name
    driver.save_screenshot(str(path))
    print(f"console screenshot: {path}")
    extra = os.environ.get("ROUTER_CONSOLE_SCREENSHOT")
    if extra and name == "console.png":
        shutil.copy(path, extra)
        print(f"console screenshot copied to {extra}")
    return path


def test_console_shows_a_live_cluster_in_chromium(tmp_path):
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1", "agent2", "agent3"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master"),
                                       ("agent3", ["agent3"], "master")],
                       dialled={"master"})
    cluster = ClusterLoop()
    state: dict = {}

    async def start():
        state["master"] = await spec.start("master")
        state["agent1"] = await spec.start("agent1", listen=False)
        peer = state["peer"] = await FakePeer.connect(spec.port("master"), pki, "agent2",
                                                      server_name="master")
        master = state["master"]
        await wait_until(lambda: {"agent1", "agent2"} <= set(master.node.connections),
                         what="agent1 and agent2 connected")

        async def results():
            n = 0
            while True:
                n += 1
                peer.send("event::CheckResult",
                          check_result("agent2", "disk", f"DISK OK {n}"), ts=time.time())
                await asyncio.sleep(0.2)
        state["sender"] = asyncio.ensure_future(results())

    async def stop():
        state["sender"].cancel()
        await state["peer"].close()
        await state["agent1"].stop()
        await state["master"].stop()

    try:
        cluster.call(start())
        port = state["master"].status_port
        with browser(height=1400) as driver:
            open_console(driver, port)
            # every configured endpoint, the absent one disconnected
            shown = wait_for(lambda: (r := rows(driver)) and len(r) == 3 and r,
                             what="three endpoint rows")
            assert shown == {"agent1": "up", "agent2": "up", "agent3": "down"}
            cell = driver.find_element("css selector", '#endpoints tr[data-name="agent3"] td.state')
            assert cell.text == "disconnected"
            banner = driver.find_element("id", "problems").text
            assert "zone agent3 is disconnected" in banner
            assert "agent1" not in banner and "agent2" not in banner
            # the figures move between two samples
            first = driver.execute_script(
                "return [document.body.dataset.generated,"
                " Number(document.getElementById('t-msgs_in').dataset.value)]")
            second = wait_for(lambda: (v := driver.execute_script(
                "return [document.body.dataset.generated,"
                " Number(document.getElementById('t-msgs_in').dataset.value)]"))
                and v[0] != first[0] and v, what="a second sample")
            assert second[1] > first[1], (first, second)
            wait_for(lambda: driver.find_elements("css selector", "#chart-msgs polyline"),
                     what="the traffic chart")
            # topology: our zone and the three agent zones, coloured by health
            health = driver.execute_script(
                "const out = {}; for (const g of document.querySelectorAll('#topology g.zone'))"
                " out[g.dataset.zone] = g.getAttribute('class'); return out;")
            assert health["agent3"] == "zone none" and health["agent1"] == "zone all"
            assert health["master"] == "zone self"
            assert "read-only" in driver.find_element("id", "mode").text
            if os.environ.get("ROUTER_CONSOLE_SCREENSHOT"):
                time.sleep(40)      # the README's picture: let the charts fill a little
            shot = screenshot(driver, tmp_path, "console.png")
            assert shot.stat().st_size > 10_000
            # search narrows the list
            search = driver.find_element("id", "search")
            search.send_keys("agent2")
            wait_for(lambda: set(rows(driver)) == {"agent2"}, what="search to narrow the list")
            assert driver.find_element("id", "ep-count").text == "1 of 3 endpoints"
            search.clear()
            search.send_keys("state:down")
            wait_for(lambda: set(rows(driver)) == {"agent3"}, what="the state filter")
            # a click on the banner's problem filters the table to that zone
            search.clear()
            driver.execute_script("document.getElementById('search')"
                                  ".dispatchEvent(new Event('input'))")
            driver.find_element("css selector", "#problem-list a").click()
            wait_for(lambda: set(rows(driver)) == {"agent3"}, what="the problem link")
            # the theme follows the OS: light here, dark when the OS prefers it
            background = "return getComputedStyle(document.body).backgroundColor"
            assert driver.execute_script(background) == "rgb(246, 247, 249)"
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
                {"name": "prefers-color-scheme", "value": "dark"}]})
            assert driver.execute_script(background) == "rgb(18, 22, 28)"
            screenshot(driver, tmp_path, "console-dark.png")
            errors = javascript_errors(driver)
            assert not errors, errors
    finally:
        try:
            cluster.call(stop())
        finally:
            cluster.close()


def test_signing_a_pending_request_through_the_console(tmp_path):
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    ca_dir = spec.directory / "master" / "ca"
    ca_dir.mkdir(parents=True)
    shutil.copy(pki.ca_cert, ca_dir / "ca.crt")
    shutil.copy(pki.ca_key, ca_dir / "ca.key")
    key = pkilib.generate_key("ec")
    request_cert = pkilib.self_signed_certificate(key, "newagent")
    fingerprint = pkilib.fingerprint(request_cert)
    cluster = ClusterLoop()
    state: dict = {}

    async def start():
        state["master"] = await spec.start(
            "master", extra=f'[status]\nadmin_token = "{TOKEN}"')
        peer = state["peer"] = await FakePeer.connect(spec.port("master"), pki, None,
                                                      server_name="master")
        await wait_until(lambda: peer.messages("icinga::Hello"), what="hello")
        peer.send("pki::RequestCertificate",
                  {"cert_request": pkilib.certificate_pem(request_cert), "ticket": ""},
                  id="r1")
        await wait_until(lambda: [m for m in peer.received if m.get("id") == "r1"],
                         what="the pending answer")
        [answer] = [m for m in peer.received if m.get("id") == "r1"]
        assert answer["result"]["status_code"] == 2, answer

    async def stop():
        await state["peer"].close()
        await state["master"].stop()

    try:
        cluster.call(start())
        port = state["master"].status_port
        with browser() as driver:
            open_console(driver, port)
            row = f'#requests tr[data-fingerprint="{fingerprint}"]'
            wait_for(lambda: driver.find_elements("css selector", row), what="the request row")
            assert "newagent" in driver.find_element("css selector", row).text
            # no token entered yet: no Sign button, the node says actions are possible
            assert not driver.find_elements("css selector", row + " button.sign")
            assert driver.find_element("id", "mode").text == "admin token set"
            driver.find_element("id", "admin-toggle").click()
            driver.find_element("id", "token").send_keys(TOKEN)
            driver.find_element("css selector", "#admin-form button[type=submit]").click()
            button = wait_for(lambda: driver.find_elements("css selector", row + " button.sign"),
                              what="the Sign button")[0]
            button.click()
            wait_for(lambda: "signed newagent" in driver.find_element("id", "admin-msg").text,
                     what="the console to report the signature")
            peer = state["peer"]
            wait_for(lambda: peer.messages("pki::UpdateCertificate"), what="delivery")
            update = peer.messages("pki::UpdateCertificate")[0]["params"]
            assert update["fingerprint_request"] == fingerprint
            signed = x509.load_pem_x509_certificate(update["cert"].encode())
            assert pkilib.same_public_key(signed, key)
            wait_for(lambda: not driver.find_elements("css selector", row),
                     what="the request to leave the pending list")
            screenshot(driver, tmp_path, "console-signed.png")
            errors = javascript_errors(driver)
            assert not errors, errors
        code, body = http_get(port, "/metrics")
        assert 'router_console_actions_total{action="sign",result="ok"} 1.0' in body.decode()
    finally:
        try:
            cluster.call(stop())
        finally:
            cluster.close()


@pytest.mark.slow
def test_console_time_to_interactive_at_5000_agents(tmp_path):
    """A satellite (its own process, as `router perf` runs it) with 5 000 agent zones,
    most agents connected by perf's emulated agents; times printed, not asserted."""
    from tests.browserutil import require_browser
    require_browser()
    from perf.benchpki import make_pki
    from perf.load import N_COUNTERS, PerfAgent
    from perf.targets import RouterTarget
    from perf.wire import agent_name, client_context, message_template

    agents, connected = 5000, 4000
    bench_pki = make_pki(tmp_path / "pki", agents, shared_key=True)
    target = RouterTarget(tmp_path, bench_pki, agents)
    target.start()
    cluster = ClusterLoop()
    emulated: list = []
    try:
        async def connect_agents():
            counter = [0] * N_COUNTERS
            sem = asyncio.Semaphore(64)

            async def one(i: int):
                name = agent_name(i)
                ctx = client_context(bench_pki.ca_cert, bench_pki.cert(name),
                                     bench_pki.out_dir / "agents.key")
                agent = PerfAgent(name, "127.0.0.1", target.port, ctx,
                                  message_template(name, 200), 1, counter, 0)
                async with sem:
                    try:
                        await agent.connect()
                    except (OSError, TimeoutError):
                        # refused by the node's admission limits: dial again as perf's agents do
                        await agent.reconnect(backoff=True)
                emulated.append(agent)
            await asyncio.gather(*(one(i) for i in range(connected)))

        started = time.monotonic()
        cluster.call(connect_agents(), timeout=600)
        print(f"{connected} emulated agents connected in {time.monotonic() - started:.1f} s")
        wait_for(lambda: len(target.connected_endpoints()) >= connected * 0.95, 120,
                 what="the agents to be admitted")
        with browser() as driver:
            started = time.monotonic()
            open_console(driver, target.status_port)
            interactive = time.monotonic() - started
            shown = len(rows(driver))
            started = time.monotonic()
            driver.find_element("id", "search").send_keys(agent_name(4321))
            wait_for(lambda: set(rows(driver)) == {agent_name(4321)}, what="search at 5 000")
            search = time.monotonic() - started
            ready_at, dom_interactive, timings = driver.execute_script(
                "const t = performance.getEntriesByType('navigation')[0];"
                " return [Number(document.body.dataset.readyAt), t.domInteractive,"
                " window.consoleTimings];")
            body = http_get(target.status_port, "/v1/console")[1]
            doc = orjson.loads(body)
            print(f"console at {agents} endpoints ({connected} connected): time to "
                  f"interactive (navigation start to the first render with data) "
                  f"{ready_at:.0f} ms (WebDriver saw it after {interactive * 1000:.0f} ms); "
                  f"DOM interactive {dom_interactive:.0f} ms; last refresh: fetch+parse "
                  f"{timings['fetch_ms']:.0f} ms, render {timings['render_ms']:.0f} ms, "
                  f"server build {timings['server_build_ms']} ms; search answered in "
                  f"{search * 1000:.0f} ms; payload {len(body) / 1024:.0f} KiB built in "
                  f"{doc['build_ms']} ms; {shown} rows on the first page")
            assert len(doc["endpoints"]) == agents + 2
            screenshot(driver, tmp_path, "console-5000.png")
            errors = javascript_errors(driver)
            assert not errors, errors
    finally:
        async def close():
            await asyncio.gather(*(a.close() for a in emulated), return_exceptions=True)
        try:
            cluster.call(close(), timeout=60)
        finally:
            cluster.close()
            target.stop()
