"""Signing throughput: ``pki::RequestCertificate`` with a valid ticket, router vs Icinga 2.

One TLS client (a configured endpoint, so the router's limits for anonymous peers do not
apply) pipelines N requests, each with a new self-signed certificate (distinct CN) and its
ticket, and waits for N answers. Both nodes do the same work per request: parse the
certificate, check the ticket (PBKDF2-SHA1, 50 000 rounds), sign a new certificate with the
CA key, answer and push ``pki::UpdateCertificate``. The node runs as its own process; the
numbers are wall time for all answers and the node's CPU time per request.

    python -m perf.bench_signing --requests 200 --ca-key rsa4096 --against icinga2

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
import time
from pathlib import Path

import orjson
import psutil

from perf.icinga import IcingaNode, find_icinga2, free_port
from router import pki
from router.protocol import netstring

CLIENT = "bench-client"


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


def router_node(base: Path, ca_dir: Path, salt: str) -> tuple[subprocess.Popen[bytes], int]:
    """``router serve`` as a process, signing with the CA in ``ca_dir``."""
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
name = "master"
endpoints = ["master"]
[[zones]]
name = "{CLIENT}"
endpoints = ["{CLIENT}"]
parent = "master"
[[endpoints]]
name = "master"
[[endpoints]]
name = "{CLIENT}"
""")
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config",
                             str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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


def measure(name: str, pid: int, port: int, ca: Path, client: tuple[Path, Path],
            frames: list[bytes], timeout: float) -> None:
    before = cpu_seconds(pid)
    seconds, signed = run_client(port, ca, *client, frames, timeout)
    cpu = cpu_seconds(pid) - before
    print(f"{name:8} {len(frames):6d} requests  {signed:6d} signed  {seconds:7.2f} s  "
          f"{len(frames) / seconds:8.1f} req/s  node CPU {cpu * 1000 / len(frames):6.2f} ms"
          f"/request", flush=True)
    if signed != len(frames):
        raise SystemExit(f"{name}: only {signed} of {len(frames)} requests were signed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ca-key", choices=("rsa4096", "rsa", "ec"), default="rsa4096")
    parser.add_argument("--against", choices=("icinga2",), default=None)
    parser.add_argument("--timeout", type=float, default=300.0)
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
        proc, port = router_node(base, ca_dir, salt)
        try:
            measure("router", proc.pid, port, ca_dir / "ca.crt", client, frames,
                    args.timeout)
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
