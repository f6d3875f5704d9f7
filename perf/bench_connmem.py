"""What one connected peer costs in memory, and what that is made of (issue 22).

Two measurements, each in a fresh process so that freed memory of one does not hide
another's:

* ``node``: our router (``RouterService`` in this process, the demo satellite of
  ``router perf`` with N agent zones) with N TLS agents connected from a child process;
  RSS after minus RSS before, over N; with ``--trace`` also the Python allocations per
  connection by source line (tracemalloc, which itself adds to the RSS);
* ``tls``: N server sessions of each TLS library alone (``bundled``: pyOpenSSL, and
  ``system``: Python's ``ssl``), created, after a handshake, and after 100 KB of records
  read (fed in the node's slices): OpenSSL's share of the above.

    python perf/bench_connmem.py [--agents 2000] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

#: the agents' side: N TLS sessions that send their Hello and wait for the node's
_AGENTS = r'''
import asyncio, resource, sys, uvloop
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from perf.wire import HELLO, client_context
port, n, certs, ca = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def main():
    sem, keep = asyncio.Semaphore(64), []
    async def one(i):
        async with sem:
            ctx = client_context(ca, certs / f"agent-{i:03d}.crt", certs / "agents.key")
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                 server_hostname="sat1")
            w.write(HELLO)
            await r.read(1)
            keep.append((r, w))
    await asyncio.gather(*(one(i) for i in range(n)))
    print("connected", flush=True)
    await asyncio.sleep(3600)
uvloop.run(main())
'''


def _rss() -> int:
    gc.collect()
    rss: int = psutil.Process().memory_info().rss
    return rss


def node(n: int, trace: bool, base: Path) -> None:
    import uvloop

    from perf.benchpki import make_pki
    from perf.targets import RouterTarget
    from router.app import RouterService, tune_gc
    from router.config import load_config

    bpki = make_pki(base, n, shared_key=True)
    config = load_config(str(RouterTarget(base, bpki, n).config_path))

    async def main() -> None:
        service = RouterService(config)
        await service.start()
        tune_gc()
        await asyncio.sleep(1)
        before = _rss()
        if trace:
            tracemalloc.start(1)
        agents = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _AGENTS, str(service.listen_port), str(n),
            str(bpki.out_dir), str(bpki.ca_cert), str(REPO), stdout=subprocess.PIPE)
        try:
            assert agents.stdout is not None
            await asyncio.wait_for(agents.stdout.readline(), max(60, n / 20))
            await asyncio.sleep(2)
            after = _rss()
            assert service.node is not None
            print(f"node: {len(service.node.connections)} connected; RSS {before / 2**20:.1f}"
                  f" -> {after / 2**20:.1f} MB: {(after - before) / n / 1024:.1f} KB per "
                  f"connection")
            if trace:
                stats = tracemalloc.take_snapshot().statistics("lineno")
                print(f"  Python allocations: {sum(s.size for s in stats) / n / 1024:.1f} KB "
                      f"per connection (tracemalloc; it adds to the RSS above)")
                for s in stats[:15]:
                    print(f"  {s.size / n:7.0f} B {s.count / n:5.1f} blocks  {s.traceback}")
        finally:
            if agents.returncode is None:
                agents.kill()
            await service.stop()

    uvloop.run(main())


def tls(n: int, library: str, stage: str, base: Path) -> None:
    from perf.benchpki import make_pki
    from perf.wire import SAT, client_context
    from router.transport import tls as tlsmod
    from router.transport.connection import BIO_SLICE
    from router.transport.tlslib import BundledTLS, SystemTLS

    bpki = make_pki(base, 1, shared_key=True)
    server: Any
    if library == "bundled":
        server = BundledTLS(bpki.ca_cert, bpki.cert(SAT), bpki.key(SAT), server_side=True)
    else:
        server = SystemTLS(tlsmod.server_context(bpki.ca_cert, bpki.cert(SAT), bpki.key(SAT)),
                           server_side=True)
    client = client_context(bpki.ca_cert, bpki.out_dir / "agent-000.crt",
                            bpki.out_dir / "agents.key")
    keep = []
    before = _rss()
    for _ in range(n):
        session = server.session()
        if stage != "new":
            into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            peer = client.wrap_bio(into, out, server_hostname=SAT)
            for _ in range(20):
                try:
                    peer.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                session.feed(out.read())
                ours = session.handshake()
                into.write(session.pull_output())
                if done and ours:
                    break
            if stage == "data":
                for _ in range(5):
                    peer.write(b"x" * 20_000)
                    data = out.read()
                    # fed as the node feeds (router.transport.connection.BIO_SLICE)
                    for start in range(0, len(data), BIO_SLICE):
                        session.feed(data[start:start + BIO_SLICE])
                        while session.read(65536):
                            pass
        keep.append(session)
    print(f"tls {library:7} {stage:9}: {(_rss() - before) / n / 1024:5.1f} KB per server "
          f"session")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--trace", action="store_true", help="tracemalloc the node's side")
    ap.add_argument("--only", help=argparse.SUPPRESS)     # node | tls:LIB:STAGE (a child)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-connmem-"))
    try:
        if args.only == "node":
            node(args.agents, args.trace, base)
        elif args.only:
            _, library, stage = args.only.split(":")
            tls(args.agents, library, stage, base)
        else:
            me = [sys.executable, os.path.abspath(__file__), "--agents", str(args.agents)]
            subprocess.run([*me, "--only", "node", *(["--trace"] if args.trace else [])],
                           check=True)
            for library in ("bundled", "system"):
                for stage in ("new", "handshake", "data"):
                    subprocess.run([*me, "--only", f"tls:{library}:{stage}"], check=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
