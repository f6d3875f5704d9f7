"""CA rollover with an overlap window, end to end over real TLS on 127.0.0.1
(docs/pki.md "CA rollover").

The master is the signer. Its ``certs/ca.crt`` becomes a bundle of the new and the old CA
(reload): old-CA peers stay connected and new-CA peers are admitted. The signer switches
``DATA_DIR/ca`` to the new CA: an agent's request (``router pki request --new-key
--ticket``) is then signed by the new CA. The master's own certificate is replaced by one
of the new CA, the old CA is dropped from the bundle (reload): a peer still holding an
old-CA certificate is refused at its next handshake.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from click.testing import CliRunner

from router import pki as router_pki
from router.cli import main as cli_main
from tests.nodeutil import ClusterSpec, FakePeer, wait_until

SALT = "rollover-salt"


class Layout:
    """Certificate paths in the shape ClusterSpec and FakePeer expect: the master's own
    files live in its data directory (as a deployed node has them), the agents' in
    ``leaves/``."""

    def __init__(self, root: Path) -> None:
        self.master_certs = root / "master" / "certs"
        self.leaves = root / "leaves"
        self.master_certs.mkdir(parents=True)
        self.leaves.mkdir()
        self.ca_cert = self.master_certs / "ca.crt"       # the master's [tls] ca

    def _dir(self, name: str) -> Path:
        return self.master_certs if name == "master" else self.leaves

    def cert(self, name: str) -> Path:
        return self._dir(name) / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self._dir(name) / f"{name}.key"

    def issue(self, ca_dir: Path, name: str) -> None:
        ca_cert, ca_key = router_pki.load_ca(ca_dir)
        cert, key = router_pki.issue_certificate(ca_cert, ca_key, name)
        router_pki.write_private_key(self.key(name), key)
        router_pki.write_certificate(self.cert(name), cert)


def write_bundle(path: Path, *ca_dirs: Path) -> None:
    """``cat new/ca.crt old/ca.crt > ca.crt``, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join((d / "ca.crt").read_bytes() for d in ca_dirs))
    os.replace(tmp, path)


def ca_of(ca_dir: Path):
    return router_pki.load_certificates(ca_dir / "ca.crt")[0]


def cli(*args: str) -> str:
    result = CliRunner().invoke(cli_main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def handshake_refused(port: int, layout: Layout, name: str, ca: Path) -> bool:
    """True when the master refuses ``name``'s certificate in the TLS handshake."""
    try:
        peer = await FakePeer.connect(port, layout, name, server_name="master", ca=ca)
    except (ssl.SSLError, OSError):
        return True
    try:   # TLS 1.3: the client may finish before the server's verdict arrives
        await peer.wait_closed(timeout=5)
        return True
    except Exception:   # noqa: BLE001 - still open: admitted
        return False
    finally:
        await peer.close()


def test_ca_rollover_with_overlap_window(tmp_path, run):
    layout = Layout(tmp_path / "nodes")
    data_dir = tmp_path / "nodes" / "master"
    cli("pki", "new-ca", str(data_dir / "ca"))                       # the CA so far
    old_ca = data_dir / "ca"
    write_bundle(layout.ca_cert, old_ca)
    for name in ("master", "old1", "old2"):
        layout.issue(old_ca, name)
    spec = ClusterSpec(tmp_path / "nodes", layout,
                       [("master", ["master"], None)]
                       + [(a, [a], "master") for a in ("old1", "old2", "new1")])
    # what the peers trust: both CAs from the start (they get the bundle too)
    peer_bundle = tmp_path / "peer-ca.crt"
    toml = spec.directory / "master.toml"

    async def reload(master) -> None:
        toml.write_text(spec.toml("master", extra=f'[pki]\nticket_salt = "{SALT}"'))
        record = await master.reload("rollover")
        assert record.result == "ok", record

    async def connect(name: str) -> FakePeer:
        peer = await FakePeer.connect(spec.port("master"), layout, name,
                                      server_name="master", ca=peer_bundle)
        await wait_until(lambda: name in master.node.connections, what=f"{name} admitted")
        return peer

    async def request_with_new_key(name: str, agent_dir: Path, ticket: str) -> str:
        port = str(spec.port("master"))
        await asyncio.to_thread(cli, "pki", "save-cert", "--host", "127.0.0.1", "--port",
                                port, "--out", str(agent_dir / "certs/trusted-parent.crt"))
        return await asyncio.to_thread(
            cli, "pki", "request", "--host", "127.0.0.1", "--port", port, "--cn", name,
            "--data-dir", str(agent_dir), "--new-key", "--ticket", ticket)

    async def main():
        nonlocal master, old_ca
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"')
        try:
            # 1. a new CA; every node trusts new + old (new first: see docs/pki.md)
            new_ca = data_dir / "ca-new"
            cli("pki", "new-ca", str(new_ca))
            assert ca_of(new_ca) != ca_of(old_ca)
            assert ca_of(new_ca).subject == ca_of(old_ca).subject   # both "Router CA"
            write_bundle(peer_bundle, new_ca, old_ca)
            old1 = await connect("old1")
            old2 = await connect("old2")
            layout.issue(new_ca, "new1")
            assert await handshake_refused(spec.port("master"), layout, "new1", peer_bundle)
            assert "new1" not in master.node.connections
            write_bundle(layout.ca_cert, new_ca, old_ca)
            await reload(master)
            conns = {a: master.node.connections[a] for a in ("old1", "old2")}
            new1 = await connect("new1")                     # a new-CA peer is admitted
            for a, peer in (("old1", old1), ("old2", old2)):  # old-CA peers stay
                assert not peer.closed and master.node.connections[a] is conns[a]

            # 2. the signer switches to the new CA: new leaves come from it
            os.rename(old_ca, data_dir / "ca-old")
            old_ca = data_dir / "ca-old"
            os.rename(new_ca, data_dir / "ca")
            new_ca = data_dir / "ca"
            agent_dir = tmp_path / "old1-node"
            (agent_dir / "certs").mkdir(parents=True)
            for src, dst in ((layout.cert("old1"), "old1.crt"),
                             (layout.key("old1"), "old1.key"), (peer_bundle, "ca.crt")):
                (agent_dir / "certs" / dst).write_bytes(src.read_bytes())
            out = await request_with_new_key("old1", agent_dir,
                                             router_pki.ticket("old1", SALT))
            assert "installed" in out and "with a new key" in out, out
            renewed = router_pki.load_certificates(agent_dir / "certs/old1.crt")[0]
            assert router_pki.signed_by(renewed, ca_of(new_ca))
            assert not router_pki.signed_by(renewed, ca_of(old_ca))
            assert router_pki.same_public_key(
                renewed, router_pki.load_private_key(agent_dir / "certs/old1.key"))
            # the agent reconnects with it
            await old1.close()
            for suffix in ("crt", "key"):
                layout.leaves.joinpath(f"old1.{suffix}").write_bytes(
                    (agent_dir / "certs" / f"old1.{suffix}").read_bytes())
            await wait_until(lambda: "old1" not in master.node.connections,
                             what="old1's old session gone")
            old1 = await connect("old1")

            # 3. the master's own certificate from the new CA, then drop the old CA
            layout.issue(new_ca, "master")
            write_bundle(layout.ca_cert, new_ca)
            await reload(master)
            ours = router_pki.load_certificates(layout.cert("master"))[0]
            assert router_pki.signed_by(ours, ca_of(new_ca))
            # sessions that are up stay up (reload closes only revoked ones) ...
            assert not old2.closed and "old2" in master.node.connections
            await old2.close()
            await wait_until(lambda: "old2" not in master.node.connections,
                             what="old2's session gone")
            # ... but an old-CA certificate is refused at its next handshake
            failures = master.node.handshake_failures.total()
            assert await handshake_refused(spec.port("master"), layout, "old2", peer_bundle)
            assert "old2" not in master.node.connections
            await wait_until(lambda: master.node.handshake_failures.total() > failures,
                             what="the handshake failure counted")
            # new-CA peers (renewed or new) still get in
            await new1.close()
            await old1.close()
            await wait_until(lambda: not ({"new1", "old1"} & set(master.node.connections)),
                             what="sessions closed")
            new1 = await connect("new1")
            old1 = await connect("old1")
            await new1.close()
            await old1.close()
        finally:
            await master.stop()

    master = None
    run(main(), timeout=120)
