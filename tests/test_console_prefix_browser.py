"""docs/console.md promises: "The page uses relative requests only to its own origin, so
it also works under a path prefix if the proxy maps one to `/` (`location /router/ {
proxy_pass http://127.0.0.1:9665/; }`), except that the page's own files are requested
from `/console/...`: map that path as well".

The page's requests are not relative: console.js polls ``fetch("/v1/console" + since)``
(router/ops/console/console.js, poll()) and posts to ``/v1/console/actions/...`` (action(),
sign()), absolute paths. Behind the documented proxy (prefix /router/ mapped to /,
/console/ mapped as well) the page loads, its script loads, and every poll goes to the
proxy's own /v1/console: 404, the console never renders ("no answer (HTTP 404),
retrying"), and the admin actions would post outside the prefix too.

Driven in Debian's headless Chromium through a small aiohttp reverse proxy on 127.0.0.1
that maps exactly what the documentation says to map.
"""
from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from tests.browserutil import ClusterLoop, browser, require_browser
from tests.nodeutil import ClusterSpec, free_port, wait_until
from tests.pkiutil import make_test_pki


def test_console_works_under_a_documented_path_prefix(tmp_path, monkeypatch):
    require_browser()
    monkeypatch.delenv("ROUTER_ADMIN_TOKEN", raising=False)
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")],
                       dialled={"master"})
    cluster = ClusterLoop()
    state: dict = {}
    proxy_port = free_port()

    async def start():
        master = state["master"] = await spec.start("master")
        state["agent1"] = await spec.start("agent1", listen=False)
        await wait_until(lambda: "agent1" in master.node.connections, what="agent1")
        upstream = f"http://127.0.0.1:{master.status_port}"
        session = state["session"] = aiohttp.ClientSession(auto_decompress=False)

        async def forward(request: web.Request, path: str) -> web.Response:
            url = upstream + path + (f"?{request.query_string}" if request.query_string else "")
            async with session.request(request.method, url,
                                       headers={k: v for k, v in request.headers.items()
                                                if k.lower() in ("authorization",
                                                                 "if-none-match")}) as resp:
                body = await resp.read()
                headers = {k: v for k, v in resp.headers.items()
                           if k.lower() not in ("content-length", "transfer-encoding",
                                                "connection", "content-encoding")}
                return web.Response(status=resp.status, body=body, headers=headers)

        async def prefixed(request: web.Request) -> web.Response:      # /router/ -> /
            return await forward(request, "/" + request.match_info["tail"])

        async def assets(request: web.Request) -> web.Response:        # /console/ as well
            return await forward(request, "/console/" + request.match_info["tail"])

        app = web.Application()
        app.router.add_route("*", "/router/{tail:.*}", prefixed)
        app.router.add_route("*", "/console/{tail:.*}", assets)
        runner = state["runner"] = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", proxy_port).start()

    async def stop():
        for key in ("runner",):
            if key in state:
                await state[key].cleanup()
        if "session" in state:
            await state["session"].close()
        for key in ("agent1", "master"):
            if key in state:
                await state[key].stop()

    try:
        cluster.call(start())
        with browser() as driver:
            driver.get(f"http://127.0.0.1:{proxy_port}/router/")
            # the page and its script came through the proxy
            assert driver.execute_script("return !!document.getElementById('search')")
            ready = False
            for _ in range(100):           # 10 s: the page polls at once on load
                ready = driver.execute_script("return document.body.dataset.ready === '1'")
                if ready:
                    break
                time.sleep(0.1)
            live = driver.execute_script("return document.getElementById('live').textContent")
            assert ready, (
                f"behind the documented path prefix (/router/ -> /, /console/ mapped too) "
                f"the console never renders: its live badge says {live!r}; console.js "
                f"fetches the absolute path /v1/console instead of a relative one")
    finally:
        try:
            cluster.call(stop())
        finally:
            cluster.close()
