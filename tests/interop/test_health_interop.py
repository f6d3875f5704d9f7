"""``router check cluster-zone`` prints what Icinga 2.13's own ``cluster-zone`` check does.

The same scripted peers meet a real Icinga master and our router master with the same
zone tree: ``a1`` connects and stays (connected zone), ``a2`` never comes (disconnected
zone), ``a3`` sends a message stamped 125 s ago and leaves (a disconnected zone with a
log lag); ``nope`` is no zone at all. Icinga runs its ``cluster-zone`` check for each as a
service; we run ``router check cluster-zone``. Outputs must match line by line (the
seconds of a lag are normalised: the two lags are read at slightly different moments),
and so must the perfdata labels and the exit states. The ``cluster`` check is compared the same way.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from perf.icinga import IcingaFactory
from router.cli import main as cli_main
from router.protocol import netstring
from .routerutil import RouterNode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

ZONES = ["a1", "a2", "a3", "nope"]
STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


class ScriptedPeer:
    """A blocking TLS cluster client: Hello, then what the test sends."""

    def __init__(self, port: int, server_name: str, cert: Path, key: Path, ca: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_name)
        self.send("icinga::Hello", {"capabilities": 1, "version": 21306})

    def send(self, method: str, params: dict[str, Any], **top: Any) -> None:
        message = {"jsonrpc": "2.0", "method": method, "params": params, **top}
        self.sock.sendall(netstring.encode(orjson.dumps(message)))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def services() -> str:
    out = ['object Host "imaster" {\n  check_command = "dummy"\n}\n']
    for zone in ZONES:
        out.append(f'object Service "zone-{zone}" {{\n  host_name = "imaster"\n'
                   f'  check_command = "cluster-zone"\n  vars.cluster_zone = "{zone}"\n'
                   f'  check_interval = 1s\n  retry_interval = 1s\n}}\n')
    out.append('object Service "cluster" {\n  host_name = "imaster"\n'
               '  check_command = "cluster"\n  check_interval = 1s\n  retry_interval = 1s\n}\n')
    return "\n".join(out)


def normalise(text: str) -> str:
    return re.sub(r"\d+ seconds?", "N seconds", text)


def play(port: int, server_name: str, factory: IcingaFactory) -> ScriptedPeer:
    """Connect a1 (kept), a3 (stamps a message 125 s old, then leaves)."""
    a1 = ScriptedPeer(port, server_name, *factory.issue("a1"), factory.ca_crt)
    a3 = ScriptedPeer(port, server_name, *factory.issue("a3"), factory.ca_crt)
    a3.send("log::SetLogPosition", {"log_position": 0}, ts=time.time() - 125)
    time.sleep(1.0)
    a3.close()
    return a1


def test_cluster_zone_matches_icinga(icinga_factory: IcingaFactory, tmp_path: Path) -> None:
    zones = [{"name": "master", "endpoints": ["imaster"]}] + [
        {"name": z, "endpoints": [z], "parent": "master"} for z in ZONES[:3]]
    endpoints = [{"name": "imaster"}] + [{"name": z} for z in ZONES[:3]]
    icinga = icinga_factory("imaster", "master", zones=zones, endpoints=endpoints,
                            services=services())
    icinga.start()
    icinga_a1 = play(icinga.api_port, "imaster", icinga_factory)
    try:
        started = time.time()
        icinga.wait_for(lambda: icinga.endpoint("a1")["connected"]
                        and not icinga.endpoint("a3")["connected"], 20, what="a1 in, a3 out")

        def fresh(zone: str) -> dict[str, Any] | None:
            attrs = icinga.service("imaster", f"zone-{zone}")
            cr = attrs and attrs.get("last_check_result")
            return cr if cr and cr["execution_end"] > started + 2 else None

        theirs = {z: icinga.wait_for(lambda z=z: fresh(z), 30, what=f"check of {z}")
                  for z in ZONES}
        their_cluster = icinga.wait_for(
            lambda: (cr := (icinga.service("imaster", "cluster") or {}).get(
                "last_check_result")) and cr["execution_end"] > started + 2 and cr,
            30, what="cluster check")
    finally:
        icinga_a1.close()

    cert, key = icinga_factory.issue("rmaster")
    router = RouterNode(tmp_path / "router", "rmaster",
                        zones=[{"name": "master", "endpoints": ["rmaster"]}] + zones[1:],
                        endpoints=[{"name": "rmaster"}] + endpoints[1:], cert=cert, key=key,
                        ca=icinga_factory.ca_crt)
    router.start()
    try:
        router_a1 = play(router.listen_port, "rmaster", icinga_factory)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            eps = {e["name"]: e for e in router.status()["endpoints"]}
            if eps["a1"]["connected"] and not eps["a3"]["connected"]:
                break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{router.status_port}"
        ours = {z: CliRunner().invoke(cli_main, ["check", "cluster-zone", "--zone", z,
                                                 "--url", url]) for z in ZONES}
        our_cluster = CliRunner().invoke(cli_main, ["check", "cluster", "--url", url])
        router_a1.close()
    finally:
        router.stop()

    for zone in ZONES:
        cr, result = theirs[zone], ours[zone]
        text, _, perf = result.output.rstrip("\n").partition(" | ")
        assert normalise(text) == normalise(cr["output"]), (zone, text, cr["output"])
        assert STATES[result.exit_code] == STATES[int(cr["state"])], (zone, result.output, cr)
        their_labels = [p["label"] if isinstance(p, dict) else p.split("=")[0]
                        for p in cr.get("performance_data") or []]
        our_labels = [p.split("=")[0] for p in perf.split()] if perf else []
        assert our_labels == their_labels, (zone, perf, cr.get("performance_data"))
        if perf:   # slave_lag carries Icinga's thresholds: 0;0 when the macros are unset
            lag = cr["performance_data"][0]
            assert perf.split()[0].endswith(f"s;{lag['warn']};{lag['crit']}"), (perf, lag)
    assert "Log lag: 2 minutes and" in ours["a3"].output
    # cluster: same first line and state; the same names (in Icinga's order or ours)
    first, _, rest = our_cluster.output.rstrip("\n").partition("\n")
    their_first, _, their_rest = their_cluster["output"].partition("\n")
    assert first.partition(" | ")[0] == their_first
    assert our_cluster.exit_code == int(their_cluster["state"]) == 2
    assert sorted(rest.strip("()").split(", ")) == sorted(their_rest.strip("()").split(", "))
