"""CPU per TLS read cycle of the node's session (issue 22): one record fed, read until empty.

A server session of ``[tls] library`` (``bundled`` by default) after a real handshake with
a Python ``ssl`` client, both in memory. The client encrypts ``--records`` records of
``--size`` bytes first (not timed); then each is fed to the session and read until the
session says there is nothing more, as ``PeerConnection._receive`` does for every read.
Prints the minimum over ``--repeat`` runs of the CPU time (``time.process_time``) per
record, so other jobs on the machine matter less than they do for wall-clock figures.

    python perf/bench_tlsread.py [--library bundled|system] [--size 1100]
"""

from __future__ import annotations

import argparse
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", choices=("bundled", "system"), default="bundled")
    ap.add_argument("--size", type=int, default=1100, help="plaintext bytes per record")
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)

    from perf.benchpki import make_pki
    from perf.wire import SAT, client_context
    from router.transport import tls
    from router.transport.tlslib import BundledTLS, SystemTLS

    base = Path(tempfile.mkdtemp(prefix="bench-tlsread-"))
    try:
        pki = make_pki(base, 1, shared_key=True)
        server = (BundledTLS(pki.ca_cert, pki.cert(SAT), pki.key(SAT), server_side=True)
                  if args.library == "bundled" else
                  SystemTLS(tls.server_context(pki.ca_cert, pki.cert(SAT), pki.key(SAT)),
                            server_side=True))
        client = client_context(pki.ca_cert, pki.out_dir / "agent-000.crt",
                                pki.out_dir / "agents.key")
        session = server.session()
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
        payload = b"x" * args.size
        best = float("inf")
        for _ in range(args.repeat):
            records = []
            for _ in range(args.records):
                peer.write(payload)
                records.append(out.read())
            t0 = time.process_time()
            for record in records:
                session.feed(record)
                while session.read(65536) is not None:
                    pass
            best = min(best, (time.process_time() - t0) / args.records)
        print(f"{args.library}: {best * 1e6:.2f} us CPU per {args.size}-byte record "
              f"(feed + read until empty; min of {args.repeat} x {args.records})")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
