"""Reload after a review (2026-12-07); each test failed on the code before its fix.

- apply_to_node swapped the topology first and closed the sessions of moved or removed
  endpoints afterwards, so what they held unconfirmed or unsent was logged under their
  *new* zone (replayed to the wrong zone's endpoints) or, removed, dropped.
- ``[pki]`` was read once at start: a reload that tightened the key policy answered
  ``ok`` while the signer went on signing keys the new policy refuses.
- A TLS rebuild (after a streak of handshake failures) that a reload overtook installed
  the contexts of the old files: the old certificate came back, and the next reload
  saw nothing to change.
"""
from __future__ import annotations

import asyncio
import shutil
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from router import pki as pkilib
from router.transport import tlslib
from tests.nodeutil import ClusterSpec, FakePeer, client_ssl_context, wait_until
from tests.pkiutil import make_test_pki

HOSTS = '[objects.hosts]\nh1 = "A"\n'


async def zone_a_messages_unconfirmed_at_e1(node, port, pki, peers) -> FakePeer:
    """p1 (the parent) and e1 connect; five SetNextCheck for zone A's host reach e1,
    which never confirms them (no log::SetLogPosition): they stay in its ledger."""
    parent = await FakePeer.connect(port, pki, "p1", server_name="m")
    e1 = await FakePeer.connect(port, pki, "e1", server_name="m")
    peers += [parent, e1]
    await wait_until(lambda: {"p1", "e1"} <= node.connected_names, what="sessions")
    now = time.time()
    for i in range(5):
        parent.send("event::SetNextCheck",
                    {"host": "h1", "next_check": now + 60 + i}, ts=now + i * 0.001)
    await wait_until(lambda: len(e1.messages("event::SetNextCheck")) == 5,
                     what="zone A's messages at e1")
    return e1


def test_unconfirmed_frames_of_a_moved_endpoint_stay_with_their_zone(tmp_path, run):
    names = ["p1", "m", "e1", "e2", "e3"]
    pki = make_test_pki(tmp_path / "pki", names)
    before = [("top", ["p1"], None), ("mid", ["m"], "top"),
              ("A", ["e1", "e2"], "mid"), ("B", ["e3"], "mid")]
    after = [("top", ["p1"], None), ("mid", ["m"], "top"),
             ("A", ["e2"], "mid"), ("B", ["e1", "e3"], "mid")]
    spec = ClusterSpec(tmp_path, pki, before)

    async def main():
        node_svc = await spec.start("m", extra=HOSTS)
        node = node_svc.node
        port = spec.port("m")
        peers = []
        try:
            e1 = await zone_a_messages_unconfirmed_at_e1(node, port, pki, peers)
            # e1 never confirmed them (no log::SetLogPosition): still in its ledger.

            moved = ClusterSpec(tmp_path, pki, after, ports=spec.ports)
            moved.config("m", extra=HOSTS)
            record = await node_svc.reload("test")
            assert record.result == "ok" and record.sessions_closed == ["e1"], record.as_json()
            await e1.wait_closed()
            await asyncio.to_thread(node.replay.writer.flush, 5.0)

            e3 = await FakePeer.connect(port, pki, "e3", server_name="m")   # zone B
            e2 = await FakePeer.connect(port, pki, "e2", server_name="m")   # zone A
            peers += [e3, e2]
            await wait_until(lambda: {"e2", "e3"} <= node.connected_names, what="e2, e3")
            await asyncio.sleep(0.5)
            got_b = len(e3.messages("event::SetNextCheck"))
            got_a = len(e2.messages("event::SetNextCheck"))
            assert (got_a, got_b) == (5, 0), (
                f"zone A's unconfirmed SetNextCheck for h1: {got_a} replayed to zone A (e2), "
                f"{got_b} replayed to zone B (e3)")
        finally:
            for p in peers:
                await p.close()
            await node_svc.stop()

    run(main())


def test_unconfirmed_frames_of_a_removed_ha_endpoint_reach_its_zone_peer(tmp_path, run):
    """Same cause: e1 is removed from HA zone A; what it never confirmed is dropped
    (zone_of(e1) is None in the new topology) instead of kept in A's log for e2."""
    names = ["p1", "m", "e1", "e2"]
    pki = make_test_pki(tmp_path / "pki", names)
    before = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A", ["e1", "e2"], "mid")]
    after = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A", ["e2"], "mid")]
    spec = ClusterSpec(tmp_path, pki, before)

    async def main():
        node_svc = await spec.start("m", extra=HOSTS)
        node = node_svc.node
        port = spec.port("m")
        peers = []
        try:
            e1 = await zone_a_messages_unconfirmed_at_e1(node, port, pki, peers)
            ClusterSpec(tmp_path, pki, after, ports=spec.ports).config("m", extra=HOSTS)
            record = await node_svc.reload("test")
            assert record.result == "ok" and record.sessions_closed == ["e1"], record.as_json()
            await e1.wait_closed()
            await asyncio.to_thread(node.replay.writer.flush, 5.0)
            e2 = await FakePeer.connect(port, pki, "e2", server_name="m")
            peers.append(e2)
            await wait_until(lambda: "e2" in node.connected_names, what="e2")
            await asyncio.sleep(0.5)
            assert len(e2.messages("event::SetNextCheck")) == 5, (
                "zone A's unconfirmed messages were dropped with the removed endpoint")
        finally:
            for p in peers:
                await p.close()
            await node_svc.stop()

    run(main())


SALT = "example-salt"


def test_reload_raising_min_rsa_bits_is_enforced(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    ca_dir = tmp_path / "master" / "ca"
    ca_dir.mkdir(parents=True)
    shutil.copy(pki.ca_cert, ca_dir / "ca.crt")
    shutil.copy(pki.ca_key, ca_dir / "ca.key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = pkilib.self_signed_certificate(key, "newagent")

    async def main():
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"\n')
        try:
            # The operator tightens the policy and reloads.
            spec.config("master", extra=f'[pki]\nticket_salt = "{SALT}"\n'
                                        'min_rsa_bits = 3072\n')
            record = await master.reload("test")
            assert record.result == "ok" and record.restart_required == []
            assert master.node.config.pki.min_rsa_bits == 3072

            peer = await FakePeer.connect(spec.port("master"), pki, None,
                                          server_name="master")
            await wait_until(lambda: peer.messages("icinga::Hello"), what="hello")
            peer.send("pki::RequestCertificate",
                      {"cert_request": pkilib.certificate_pem(cert),
                       "ticket": pkilib.ticket("newagent", SALT)}, id="r1")
            await wait_until(lambda: [m for m in peer.received if m.get("id") == "r1"],
                             what="answer")
            [answer] = [m for m in peer.received if m.get("id") == "r1"]
            result = answer["result"]
            assert result["status_code"] == 1, (
                "a 2048-bit key was signed although the reloaded [pki] min_rsa_bits is "
                f"3072: {sorted(result)}")
            await peer.close()
        finally:
            await master.stop()

    run(main())


async def served_serial(port: int, pki) -> int:
    ctx = client_ssl_context(pki, None)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="master"), 10)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


def test_streak_rebuild_does_not_revert_a_reloaded_certificate(tmp_path, run, monkeypatch):
    old_pki = make_test_pki(tmp_path / "pki-old", ["master"])
    new_pki = make_test_pki(tmp_path / "pki-new", ["master"])   # same CA, re-issued leaf
    old_serial = x509.load_pem_x509_certificate(old_pki.cert("master").read_bytes()).serial_number
    new_serial = x509.load_pem_x509_certificate(new_pki.cert("master").read_bytes()).serial_number
    assert old_serial != new_serial
    zones = [("master", ["master"], None)]
    spec = ClusterSpec(tmp_path, old_pki, zones)

    gate = threading.Event()
    real = tlslib.contexts

    def slow_for_old_files(library, ca, cert, key, crl=None):
        if str(cert) == str(old_pki.cert("master")):
            gate.wait(10)                      # the rebuild's file reading takes a while
        return real(library, ca, cert, key, crl)

    async def main():
        master = await spec.start("master")
        try:
            assert await served_serial(spec.port("master"), old_pki) == old_serial
            monkeypatch.setattr(tlslib, "contexts", slow_for_old_files)
            # A streak of identical handshake failures starts a rebuild ...
            rebuild = asyncio.ensure_future(master.reloader.rebuild_tls("unknown_ca"))
            await asyncio.sleep(0.2)
            # ... while the operator points [tls] at the new files and reloads.
            new_spec = ClusterSpec(tmp_path, new_pki, zones, ports=spec.ports)
            new_spec.config("master")
            record = await master.reload("test")
            assert record.result == "ok", record.error
            assert record.changes.get("tls") is True
            assert await served_serial(spec.port("master"), new_pki) == new_serial
            gate.set()
            assert await rebuild is False      # superseded by the reload: dropped
            # The node must keep serving the certificate of its configuration.
            serial = await served_serial(spec.port("master"), new_pki)
            again = await master.reload("test")
            serial_after_second_reload = await served_serial(spec.port("master"), new_pki)
            assert (serial, serial_after_second_reload) == (new_serial, new_serial), (
                f"served the old certificate after the rebuild (old={old_serial:x}); "
                f"second reload changes: {again.changes}")
        finally:
            gate.set()
            await master.stop()

    run(main())
