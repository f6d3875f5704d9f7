"""Signing throughput: ``pki::RequestCertificate`` with a valid ticket, router vs Icinga 2.

One TLS client (a configured endpoint, so the router's limits for anonymous peers do not
apply) pipelines N requests, each with a new self-signed certificate (distinct CN) and its
ticket, and waits for N answers. Both nodes do the same work per request: parse the
certificate, check the ticket (PBKDF2-SHA1, 50 000 rounds), sign a new certificate with the
CA key, answer and push ``pki::UpdateCertificate``. The node runs as its own process; the
numbers are wall time for all answers and the node's CPU time per request.

    python -m perf.bench_signing --requests 200 --ca-key rsa4096 --against icinga2

``--probe`` also measures routing latency during the burst: an emulated agent
(``probe-agent``, a child zone) sends an ``event::CheckResult`` every 10 ms, which the
node relays to its emulated parent (``top``); latency is arrival minus the agent's
``execution_end``, reported for the 2 s before the burst and for the burst itself.
``--router-src DIR`` runs the node from another source tree (``git archive REV | tar -x
-C DIR``) for a before/after comparison on the same machine.

Icinga 2.13 signs only with an RSA CA key; the router signs with RSA or EC
(``--ca-key ec``, router only). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil

from perf.icinga import IcingaNode, find_icinga2, free_port
from router import pki
from router.protocol import netstring

CLIENT = "bench-client"
PROBE = "probe-agent"
TOP = "top"
PROBE_INTERVAL = 0.01


def make_requests(count: int, salt: str) -> list[bytes]:
    """``count`` framed requests with ids, distinct CNs and valid tickets (not timed)."""
    frames = []
    key = pki.generate_key("ec")        # one key: the work per request is the same
    for i in range(count):
        cn = f"bench-agent-{i:05d}"
        cert = pki.self_signed_certificate(key, cn)
        frames.append(netstring.encode(orjson.dumps({
            "id": str(i), "jsonrpc": "2.0", "method": "pki::RequestCertificate",
            "params": {"cert_request": pki.certificate_pem(cert),
                       "ticket": pki.ticket(cn, salt)}})))
    return frames


def run_client(port: int, ca: Path, cert: Path, key: Path, frames: list[bytes],
               timeout: float) -> tuple[float, int]:
    """Send every frame at once, wait for every answer: (seconds, signed answers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    decoder = netstring.NetstringDecoder(256 * 1024 * 1024)
    answers = signed = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname="master") as sock:
        started = time.perf_counter()
        sock.sendall(b"".join(frames))
        while answers < len(frames):
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"connection closed after {answers} answers")
            for payload in decoder.feed(data):
                message = orjson.loads(payload)
                if "id" in message:
                    answers += 1
                    result = message.get("result") or {}
                    signed += result.get("status_code") == 0
        return time.perf_counter() - started, signed


def router_node(base: Path, ca_dir: Path, salt: str, router_src: Path | None = None
                ) -> tuple[subprocess.Popen[bytes], int]:
    """``router serve`` as a process, signing with the CA in ``ca_dir``; its zone has
    the parent zone ``top`` and the child zones of the client and the probe agent."""
    data = base / "router"
    (data / "certs").mkdir(parents=True)
    shutil.copytree(ca_dir, data / "ca")
    pki.issue_node_files(ca_dir, data / "certs", "master")
    port = free_port()
    config = base / "router.toml"
    config.write_text(f"""listen = "127.0.0.1:{port}"
status_listen = "none"
log_level = "warning"
[node]
name = "master"
data_dir = "{data}"
[pki]
ticket_salt = "{salt}"
[[zones]]
name = "{TOP}"
endpoints = ["{TOP}"]
[[zones]]
name = "master"
endpoints = ["master"]
parent = "{TOP}"
[[zones]]
name = "{CLIENT}"
endpoints = ["{CLIENT}"]
parent = "master"
[[zones]]
name = "{PROBE}"
endpoints = ["{PROBE}"]
parent = "master"
[[endpoints]]
name = "{TOP}"
[[endpoints]]
name = "master"
[[endpoints]]
name = "{CLIENT}"
[[endpoints]]
name = "{PROBE}"
""")
    env = dict(os.environ)
    if router_src is not None:
        env["PYTHONPATH"] = str(router_src)
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config",
                             str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env,
                            cwd=str(router_src) if router_src is not None else None)
    wait_port(port, proc)
    return proc, port


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the node exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    total = 0.0
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def _tls(port: int, ca: Path, files: tuple[Path, Path]) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(files[0]), str(files[1]))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = ctx.wrap_socket(raw, server_hostname="master")
    sock.sendall(netstring.encode(orjson.dumps({
        "jsonrpc": "2.0", "method": "icinga::Hello",
        "params": {"capabilities": 1, "version": 21306}})))
    return sock


class RelayProbe:
    """An agent that sends a check result every PROBE_INTERVAL and the parent that
    receives what the node relays: (arrival time, latency) of each one."""

    def __init__(self, port: int, ca: Path, agent: tuple[Path, Path],
                 parent: tuple[Path, Path]) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._parent = _tls(port, ca, parent)
        self._agent = _tls(port, ca, agent)
        self._threads = [threading.Thread(target=self._receive, daemon=True),
                         threading.Thread(target=self._send, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            cr = {"type": "CheckResult", "active": True, "check_source": PROBE,
                  "command": ["probe"], "execution_start": now, "execution_end": now,
                  "schedule_start": now, "schedule_end": now, "exit_status": 0,
                  "output": "probe", "performance_data": [], "state": 0, "ttl": 0,
                  "vars_after": {"attempt": 1, "reachable": True, "state": 0,
                                 "state_type": 1},
                  "vars_before": {"attempt": 1, "reachable": True, "state": 0,
                                  "state_type": 1}}
            self._agent.sendall(netstring.encode(orjson.dumps({
                "jsonrpc": "2.0", "method": "event::CheckResult", "ts": now,
                "params": {"host": PROBE, "service": "probe", "cr": cr}})))
            self._stop.wait(PROBE_INTERVAL)

    def _receive(self) -> None:
        decoder = netstring.NetstringDecoder(64 * 1024 * 1024)
        self._parent.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data = self._parent.recv(1 << 16)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if not data:
                return
            now = time.time()
            for payload in decoder.feed(data):
                message = orjson.loads(payload)
                if message.get("method") == "event::CheckResult":
                    sent = message["params"]["cr"]["execution_end"]
                    self.samples.append((now, now - sent))

    def between(self, start: float, end: float) -> list[float]:
        return [lat for at, lat in self.samples if start <= at < end]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._agent.close()
        self._parent.close()


def _quantiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)

    def q(x: float) -> float:
        return ordered[min(len(ordered) - 1, int(x * len(ordered)))] * 1000

    return (f"{len(ordered):5d} relayed  p50 {q(0.5):7.2f} ms  p90 {q(0.9):7.2f} ms  "
            f"p99 {q(0.99):7.2f} ms  "
            f"max {ordered[-1] * 1000:7.2f} ms")


def measure(name: str, pid: int, port: int, ca: Path, client: tuple[Path, Path],
            frames: list[bytes], timeout: float, probe: RelayProbe | None = None) -> None:
    if probe is not None:
        quiet_start = time.time()
        time.sleep(2.0)
    before = cpu_seconds(pid)
    burst_start = time.time()
    seconds, signed = run_client(port, ca, *client, frames, timeout)
    burst_end = time.time()
    cpu = cpu_seconds(pid) - before
    print(f"{name:8} {len(frames):6d} requests  {signed:6d} signed  {seconds:7.2f} s  "
          f"{len(frames) / seconds:8.1f} req/s  node CPU {cpu * 1000 / len(frames):6.2f} ms"
          f"/request", flush=True)
    if probe is not None:
        time.sleep(0.2)             # the last relayed probes of the burst
        probe.stop()
        print(f"  relay before  {_quantiles(probe.between(quiet_start, burst_start))}")
        print(f"  relay during  {_quantiles(probe.between(burst_start, burst_end))}",
              flush=True)
    if signed != len(frames):
        raise SystemExit(f"{name}: only {signed} of {len(frames)} requests were signed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ca-key", choices=("rsa4096", "rsa", "ec"), default="rsa4096")
    parser.add_argument("--against", choices=("icinga2",), default=None)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--probe", action="store_true",
                        help="measure relay latency before and during the burst")
    parser.add_argument("--router-src", type=Path, default=None,
                        help="run the node from this source tree")
    args = parser.parse_args(argv)
    if args.against and args.ca_key == "ec":
        parser.error("Icinga 2.13 signs only with an RSA CA key")
    salt = "bench-salt"
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp:
        base = Path(tmp)
        ca_dir = base / "ca"
        pki.create_ca(ca_dir, common_name="Icinga CA", key_type=args.ca_key)
        client = pki.issue_node_files(ca_dir, base / "client", CLIENT)
        frames = make_requests(args.requests, salt)
        print(f"CA key {args.ca_key}, one client, {args.requests} pipelined requests "
              f"(distinct CNs, valid tickets), {os.cpu_count()} CPUs", flush=True)
        proc, port = router_node(base, ca_dir, salt, args.router_src)
        try:
            probe = None
            if args.probe:
                probe = RelayProbe(port, ca_dir / "ca.crt",
                                   pki.issue_node_files(ca_dir, base / "probe", PROBE),
                                   pki.issue_node_files(ca_dir, base / "top", TOP))
            measure("router", proc.pid, port, ca_dir / "ca.crt", client, frames,
                    args.timeout, probe)
        finally:
            proc.terminate()
            proc.wait(10)
        if args.against == "icinga2":
            if find_icinga2() is None:
                raise SystemExit("icinga2 not found (ICINGA2_BIN, PATH, /usr/sbin)")
            zones = [{"name": "master", "endpoints": ["master"]},
                     {"name": CLIENT, "endpoints": [CLIENT], "parent": "master"}]
            icinga = IcingaNode(base / "icinga", "master", "master", api_port=free_port(),
                                endpoints=[{"name": "master"}, {"name": CLIENT}],
                                zones=zones, checker=False)
            icinga.ticket_salt = salt
            icinga.write_config()
            shutil.copytree(ca_dir, icinga.data_dir / "ca")
            cert, key = pki.issue_node_files(ca_dir, base / "icinga-certs", "master")
            icinga.install_certs(ca_dir / "ca.crt", cert, key)
            icinga.start()
            try:
                pid = icinga.pid
                assert pid is not None
                measure("icinga2", pid, icinga.api_port, ca_dir / "ca.crt", client,
                        frames, args.timeout)
            finally:
                icinga.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
