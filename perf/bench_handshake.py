"""Micro-benchmark: OpenSSL's CPU per TLS handshake, each side, with the node's contexts.

``router perf`` reports the node's CPU per accepted agent (about 1 ms) and the agents'
(about 1 ms). This script measures the floor under both: one client and one server
TLS session (``router.tlslib``) joined in memory in one process, no sockets, no event
loop, timing each side's handshake steps (with feeding and taking out the bytes). The
baseline is the node's server context on the ``system`` library (Python's ``ssl``,
:func:`router.tls.server_context`) against an agent context like ``router perf``'s (its
certificate file holds its chain, as an Icinga agent sends it; the agents always use
Python's ``ssl``, like Icinga on the distribution's OpenSSL). The variants show what the
cost depends on, as ratios against that baseline in the same run:

- ``bundled``: the node on the ``bundled`` library (pyOpenSSL on the OpenSSL inside the
  cryptography wheel), the node's default;
- ``tls12``: the node capped at TLS 1.2;
- ``p256-group``: key exchange on P-256 instead of X25519;
- ``no-client-cert``: the node does not ask for a certificate (not an option for a
  cluster node: it is how peers are identified; shows what checking one costs);
- ``client-leaf-only``: the agent sends its certificate without the CA (Icinga agents
  send both: shows what parsing the redundant CA copy costs the node).

A second table gives the node's CPU per 1 KiB message on an open session (``baseline``
and ``bundled``): what the TLS library costs on the data path.

Usage: ``python perf/bench_handshake.py [--json] [--number N] [--repeat R]``. Each figure
is the minimum over ``--repeat`` runs of ``--number`` handshakes (in ms per handshake),
or of ``--number`` x 50 messages (in us per message).
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf.common import SAT, agent_name, client_context, make_pki
from router.transport import tls, tlslib
from router.transport.tlslib import TLSLibrary, TLSSession


def _step(session: TLSSession, data: bytes) -> tuple[bool, bytes, float]:
    """Feed ``data``, one handshake step, take the output: (finished, output, CPU s)."""
    t = time.process_time()
    if data:
        session.feed(data)
    done = session.handshake()
    out = session.pull_output()
    return done, out, time.process_time() - t


def _handshake(client: TLSLibrary, server: TLSLibrary
               ) -> tuple[TLSSession, TLSSession, float, float]:
    """One full handshake: the two sessions and each side's CPU seconds."""
    c, s = client.session(SAT), server.session()
    client_s = server_s = 0.0
    c_done = s_done = False
    to_client = b""
    for _round in range(8):
        to_server = b""
        if not c_done:
            c_done, to_server, took = _step(c, to_client)
            client_s += took
        if not s_done:
            s_done, to_client, took = _step(s, to_server)
            server_s += took
        if c_done and s_done:
            return c, s, client_s, server_s
    raise RuntimeError("handshake did not complete")


def handshake_cpu(client: TLSLibrary, server: TLSLibrary, number: int) -> tuple[float, float]:
    """(client, server) CPU seconds per handshake over ``number`` full handshakes."""
    client_s = server_s = 0.0
    for _ in range(number):
        _c, _s, took_c, took_s = _handshake(client, server)
        client_s += took_c
        server_s += took_s
    return client_s / number, server_s / number


def message_cpu(client: TLSLibrary, server: TLSLibrary, number: int) -> float:
    """The node's CPU seconds per 1 KiB message on an open session, as the transport
    handles one: feed the record, read until empty, take out the read's TLS output
    (usually none), write a 1 KiB answer, take out its record."""
    c, s, _, _ = _handshake(client, server)
    message = b"x" * 1024
    records = []
    for _ in range(number):
        c.write(message)
        records.append(c.pull_output())
    t = time.process_time()
    for record in records:
        s.feed(record)
        while s.read(16384) is not None:
            pass
        s.pull_output()
        s.write(message)
        s.pull_output()
    return (time.process_time() - t) / number


def variants(base: Path) -> dict[str, tuple[TLSLibrary, TLSLibrary]]:
    bench_pki = make_pki(base, 1, shared_key=True)
    name = agent_name(0)
    key = bench_pki.out_dir / "agents.key"

    def agent(cert: Path | None = None) -> TLSLibrary:
        return tlslib.SystemTLS(client_context(bench_pki.ca_cert, cert or bench_pki.cert(name),
                                               key), server_side=False)

    def node() -> ssl.SSLContext:
        return tls.server_context(bench_pki.ca_cert, bench_pki.cert(SAT), bench_pki.key(SAT))

    def system(ctx: ssl.SSLContext) -> TLSLibrary:
        return tlslib.SystemTLS(ctx, server_side=True)

    out = {"baseline": (agent(), system(node()))}
    out["bundled"] = (agent(), tlslib.contexts("bundled", bench_pki.ca_cert, bench_pki.cert(SAT),
                                               bench_pki.key(SAT))[0])
    capped = node()
    capped.maximum_version = ssl.TLSVersion.TLSv1_2
    out["tls12"] = (agent(), system(capped))
    p256 = node()
    p256.set_ecdh_curve("prime256v1")
    out["p256-group"] = (agent(), system(p256))
    blind = node()
    blind.verify_mode = ssl.CERT_NONE
    out["no-client-cert"] = (agent(), system(blind))
    # A client that cannot complete its chain (no CA in its store) sends the leaf alone.
    leaf = base / "leaf.crt"
    pem = bench_pki.cert(name).read_bytes()
    end = b"-----END CERTIFICATE-----"
    leaf.write_bytes(pem[:pem.index(end) + len(end)] + b"\n")
    lone = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lone.check_hostname = False
    lone.verify_mode = ssl.CERT_NONE
    lone.load_cert_chain(str(leaf), str(key))
    out["client-leaf-only"] = (tlslib.SystemTLS(lone, server_side=False), system(node()))
    return out


def run(number: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-handshake-") as tmp:
        cases = variants(Path(tmp))
        results: dict[str, dict[str, float]] = {}
        for label, (client, server) in cases.items():
            handshake_cpu(client, server, 20)             # warm caches and lazy loads
            runs = [handshake_cpu(client, server, number) for _ in range(repeat)]
            results[label] = {"client_ms": min(r[0] for r in runs) * 1000,
                              "server_ms": min(r[1] for r in runs) * 1000}
            if label in ("baseline", "bundled"):
                results[label]["message_us"] = min(
                    message_cpu(client, server, number * 50) for _ in range(repeat)) * 1e6
    base = results["baseline"]
    for r in results.values():
        r["client_ratio"] = r["client_ms"] / base["client_ms"]
        r["server_ratio"] = r["server_ms"] / base["server_ms"]
    from OpenSSL import SSL
    bundled = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    return {"openssl": ssl.OPENSSL_VERSION, "bundled_openssl": bundled,
            "number": number, "repeat": repeat,
            "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=300, help="handshakes per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the minimum counts")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    out = run(args.number, args.repeat)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"# {out['openssl']} (agents, and the node but in 'bundled': "
          f"{out['bundled_openssl']}); {args.number} handshakes x {args.repeat} runs, minimum")
    print(f"{'variant':18} {'client ms':>10} {'ratio':>6} {'server ms':>10} {'ratio':>6}")
    for label, r in out["results"].items():
        print(f"{label:18} {r['client_ms']:10.3f} {r['client_ratio']:6.2f} "
              f"{r['server_ms']:10.3f} {r['server_ratio']:6.2f}")
    print(f"# node CPU per 1 KiB message on an open session ({args.number * 50} messages)")
    base_us = out["results"]["baseline"]["message_us"]
    for label in ("baseline", "bundled"):
        us = out["results"][label]["message_us"]
        print(f"{label:18} {us:7.2f} us {us / base_us:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
