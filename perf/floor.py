"""The count-only floor of ``router perf``: a uvloop TLS server that counts frames.

``router perf --against floor`` runs the same agents against this server in the same run
as our router (and Icinga). It does the least any node must do with an agent's results:
accept the TLS session (verifying the client's certificate against the CA, as a node
does), send one ``icinga::Hello`` (the agents count themselves connected on the node's
first frame), decode the netstring frames and count the ``event::CheckResult`` ones.
Nothing is parsed, routed, logged or relayed. What it reaches is the ceiling of a single
Python process on uvloop and OpenSSL on this machine; our router's figure over the
floor's says how much of that ceiling routing costs.

The count lives in an 8-byte file mapped into memory (``--counter FILE``), written after
every read, so the tool reads it without asking the server anything (:class:`FloorTally`,
a :class:`perf.parent.Tally` whose ``check_results`` is that number).

Run by :class:`FloorTarget`: ``python -m perf.floor --port P --ca CA --cert C --key K
--counter FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import signal
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from perf.benchpki import BenchPKI
from perf.measure import free_port, listening, raise_nofile
from perf.parent import Tally
from perf.targets import REPO, Target
from perf.wire import HELLO, SAT

__all__ = ["FloorServer", "FloorTally", "FloorTarget", "main"]

#: what a counted frame names within its first bytes (orjson keeps ``method`` second)
CHECK_RESULT = b"event::CheckResult"
_COUNT = struct.Struct("q")


class FloorServer:
    """The frame counts shared by every connection, published in the mapped file."""

    def __init__(self, counter: mmap.mmap, hello: bytes) -> None:
        self.counter = counter
        self.hello = hello
        self.frames = _COUNT.unpack_from(counter)[0]     # a restart continues the count
        self.connections = 0

    def publish(self) -> None:
        _COUNT.pack_into(self.counter, 0, self.frames)


class _FloorProtocol(asyncio.Protocol):
    """One agent's session: decode netstrings, count CheckResults, keep nothing else."""

    __slots__ = ("buf", "server", "transport")

    def __init__(self, server: FloorServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.transport.write(self.server.hello)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n, find = 0, len(buf), buf.find
        counted = 0
        while True:
            colon = find(b":", pos, pos + 12)
            if colon < 0:
                break
            try:
                size = int(buf[pos:colon])
            except ValueError:
                self.transport.abort()  # type: ignore[union-attr]
                return
            end = colon + 1 + size
            if end >= n:
                break
            if find(CHECK_RESULT, colon + 1, colon + 64) >= 0:
                counted += 1
            pos = end + 1
        if pos:
            del buf[:pos]
        if counted:
            server = self.server
            server.frames += counted
            server.publish()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections -= 1


async def _serve(port: int, ctx: ssl.SSLContext, counter_path: Path, hello: bytes) -> None:
    fd = os.open(counter_path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size < _COUNT.size:
        os.ftruncate(fd, _COUNT.size)
    counter = mmap.mmap(fd, _COUNT.size)
    os.close(fd)
    server = FloorServer(counter, hello)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _FloorProtocol(server), "127.0.0.1", port,
                                   ssl=ctx, reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"floor listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    srv.close()
    server.publish()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--counter", required=True)
    args = ap.parse_args(argv)
    import uvloop

    raise_nofile()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED          # a node verifies its peers; so does the floor
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    uvloop.run(_serve(args.port, ctx, Path(args.counter), HELLO))
    return 0


# ---------------------------------------------------------------------- the tool's side

class FloorTally(Tally):
    """A :class:`Tally` whose ``check_results`` is the floor's published count."""

    def __init__(self, counter_path: Path) -> None:
        fd = os.open(counter_path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < _COUNT.size:
            os.ftruncate(fd, _COUNT.size)
        self._mm = mmap.mmap(fd, _COUNT.size)
        os.close(fd)
        super().__init__()

    @property
    def check_results(self) -> int:
        value: int = _COUNT.unpack_from(self._mm)[0]
        return value

    @check_results.setter
    def check_results(self, value: int) -> None:
        pass                # the floor counts; the emulated parent receives none of them


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the floor goes when the tool does (it has a session of its own)."""
    import ctypes
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class FloorTarget(Target):
    """The floor as a ``router perf`` target (the interface of :class:`perf.targets.Target`)."""

    name = "floor"
    #: no routing, no parent to deliver to: replay and latency scenarios do not apply
    count_only = True

    def __init__(self, base: Path, bench_pki: BenchPKI) -> None:
        self.dir = base / "floor"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.counter_path = self.dir / "frames.count"
        self.log_path: Path = self.dir / "floor.out"
        self.args = ["--port", str(self.port), "--ca", str(bench_pki.ca_cert),
                     "--cert", str(bench_pki.cert(SAT)), "--key", str(bench_pki.key(SAT)),
                     "--counter", str(self.counter_path)]
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def make_tally(self) -> FloorTally:
        return FloorTally(self.counter_path)

    def start(self) -> None:
        self._out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "perf.floor", *self.args],
                                     cwd=str(REPO), stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"floor exited with {self.proc.returncode}:\n"
                                   f"{self.diagnostics()}")
            if listening(self.port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the floor did not listen\n{self.diagnostics()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not None:
            self._out.close()
            self._out = None

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def connected_endpoints(self) -> set[str]:
        raise NotImplementedError

    def version(self) -> str:
        from importlib.metadata import version
        return (f"count-only floor: uvloop {version('uvloop')}, Python ssl "
                f"({ssl.OPENSSL_VERSION})")

    def diagnostics(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-2000:]


if __name__ == "__main__":
    sys.exit(main())
