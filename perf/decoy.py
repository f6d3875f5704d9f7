"""A decoy for ``bench_floods --decoy``: what a flood costs the measuring machine alone.

On the 2-core reference machine the flooder shares a CPU with the bench's emulated
agents and parent, which stamp each result's send and arrival: a flood delays the stamps
as well as the node. To tell the two apart, the bench aims each flood at this process
instead of the node, while the honest agents keep sending through the node. The decoy's
own work lands on the measuring CPU too, so the rise it shows is an upper bound on what
is the machine's rather than the node's; a flood that barely moves it (a bare
connect/close loop: 1.07x) and moves the node's row a lot is the node's to fix.

It serves what the flooders expect, with the node's deadline: a TLS port (anonymous
clients welcome; a handshake or a session silent for ``--idle`` seconds is closed) and a
plain port for the status-port floods (closed after ``--idle`` seconds). One uvloop
process, like the node, run on the flooder's CPUs. Prints ``{"cluster": port,
"status": port}`` on one line once listening; runs until stdin closes.

```sh
python -m perf.decoy [--idle 10]
```
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tempfile
from pathlib import Path

import uvloop


def _context(workdir: Path) -> ssl.SSLContext:
    """A server context with a throwaway CA's certificate for ``decoy``."""
    from router import pki

    pki.create_ca(workdir / "ca", common_name="Decoy CA")
    ca_cert, ca_key = pki.load_ca(workdir / "ca")
    cert, key = pki.issue_certificate(ca_cert, ca_key, "decoy")
    pki.write_certificate(workdir / "decoy.crt", cert)
    pki.write_private_key(workdir / "decoy.key", key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(workdir / "decoy.crt", workdir / "decoy.key")
    return ctx


def _reader(idle: float):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await asyncio.wait_for(reader.read(65536), idle):
                pass
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()
    return handle


async def serve(idle: float) -> None:
    with tempfile.TemporaryDirectory(prefix="decoy-") as tmp:
        ctx = _context(Path(tmp))
        cluster = await asyncio.start_server(_reader(idle), "127.0.0.1", 0, ssl=ctx,
                                             ssl_handshake_timeout=idle, backlog=4096)
        status = await asyncio.start_server(_reader(idle), "127.0.0.1", 0, backlog=4096)
        ports = {"cluster": cluster.sockets[0].getsockname()[1],
                 "status": status.sockets[0].getsockname()[1]}
        print(json.dumps(ports), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)   # until the bench closes stdin
        cluster.close()
        status.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=float, default=10.0,
                   help="close a connection silent this long, s (the node's handshake "
                        "deadline)")
    a = p.parse_args(argv)
    uvloop.run(serve(a.idle))


if __name__ == "__main__":
    main()
