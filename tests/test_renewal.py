"""Renewal of a node's own certificate with a new key, end to end over TLS on 127.0.0.1
(router.node.owncert, router.pki.rekey; docs/pki.md "Renewal"): an agent whose
certificate is about to expire renews it through a satellite (no CA key) with the signing
master; the old pair stays in use until the new certificate arrives, the sessions that
are up survive, new handshakes present the new certificate."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from router import pki as pkilib
from router.pki.rekey import PREVIOUS_OID
from tests.nodeutil import ClusterSpec, FakePeer, metrics_text, wait_until
from tests.pkiutil import make_test_pki

REQ = "pki::RequestCertificate"
UPD = "pki::UpdateCertificate"


def _make_signer(spec: ClusterSpec, name: str) -> None:
    ca_dir = spec.directory / name / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(spec.pki.ca_cert, ca_dir / "ca.crt")
    shutil.copy(spec.pki.ca_key, ca_dir / "ca.key")


def _expiring(directory: Path, name: str, days: int = 10) -> pkilib.PrivateKey:
    """Give ``name`` an RSA key and a certificate of our CA with ``days`` left."""
    ca_cert, ca_key = pkilib.load_ca(directory)
    now = dt.datetime.now(dt.timezone.utc)
    key = pkilib.generate_key("rsa", 2048)
    cert, _ = pkilib.issue_certificate(ca_cert, ca_key, name, key=key,
                                       not_before=now - dt.timedelta(days=380),
                                       not_after=now + dt.timedelta(days=days))
    pkilib.write_private_key(directory / f"{name}.key", key)
    pkilib.write_certificate(directory / f"{name}.crt", cert)
    return key


def _days_left(path: Path) -> int:
    cert = pkilib.load_certificates(path)[0]
    return (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days


def _metric(text: str, prefix: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(prefix))


def test_agent_renews_with_a_new_key_through_a_satellite(tmp_path, run, caplog):
    own = make_test_pki(tmp_path / "own", ["master", "sat", "agent1"])
    old_key = _expiring(tmp_path / "own", "agent1")
    old_cert_pem = own.cert("agent1").read_bytes()
    spec = ClusterSpec(tmp_path, own, [("master", ["master"], None),
                                       ("sat", ["sat"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       dialled={"master", "sat"})
    _make_signer(spec, "master")
    pending = Path(f"{own.key('agent1')}.new")

    async def main():
        sat = await spec.start("sat")
        agent = await spec.start("agent1")
        master = None
        try:
            # 1. the master is away: the request waits on the satellite, the agent keeps
            #    its old pair and its session, the new key waits beside it (0600)
            await wait_until(lambda: pending.exists() and "agent1" in sat.node.connections,
                             what="the agent's new key and its session")
            await wait_until(lambda: sat.node.enrollment.pending == 1,
                             what="the request stored on the satellite")
            assert pending.stat().st_mode & 0o777 == 0o600
            assert own.cert("agent1").read_bytes() == old_cert_pem
            assert pkilib.same_public_key(pkilib.load_certificates(own.cert("agent1"))[0],
                                          pkilib.load_private_key(own.key("agent1")))
            [stored] = pkilib.RequestStore(spec.directory / "sat").list().requests
            assert pkilib.renewal_proof(stored.certificate) is not None
            agent_side = agent.node.connections["sat"]
            sat_side = sat.node.connections["agent1"]
            contexts = (agent.node.server_context, agent.node.client_context)

            # 2. the master comes: signs the new key, the satellite delivers it
            master = await spec.start("master")
            await wait_until(lambda: _days_left(own.cert("agent1")) > 300, timeout=15,
                             what="the agent's renewed certificate")
            renewed = pkilib.load_certificates(own.cert("agent1"))[0]
            new_key = pkilib.load_private_key(own.key("agent1"))
            assert pkilib.same_public_key(renewed, new_key)
            assert not pkilib.same_public_key(renewed, old_key)
            assert new_key.key_size == 2048 and isinstance(new_key, type(old_key))
            assert own.key("agent1").stat().st_mode & 0o777 == 0o600
            assert not pending.exists()
            assert not pkilib.staged_cert_path(own.cert("agent1")).exists()
            # the sessions that were up are the same ones, still open
            assert agent.node.connections["sat"] is agent_side and agent_side.state == "open"
            assert sat.node.connections["agent1"] is sat_side and sat_side.state == "open"
            # new handshakes present the new certificate
            assert (agent.node.server_context, agent.node.client_context) != contexts
            peer = await FakePeer.connect(spec.port("agent1"), own, None,
                                          server_name="agent1")
            served = peer.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert pkilib.parse_request(served) == renewed
            await peer.close()
            text = await metrics_text(agent)
            assert _metric(text, 'router_cert_expiry_seconds{endpoint="agent1"}') > 300 * 86400
            text = await metrics_text(master)
            assert _metric(text, 'router_csr_requests_total{result="signed"}') == 1
        finally:
            await agent.stop()
            await sat.stop()
            if master is not None:
                await master.stop()

    run(main(), timeout=60)
    assert "asked sat for our new key" in caplog.text
    assert "signed a certificate for CN 'agent1' (renewal with a new key)" in caplog.text
    assert "installed our new certificate and key" in caplog.text
    assert "re-sign our current key" not in caplog.text


def _master_and_peer_setup(tmp_path):
    own = make_test_pki(tmp_path / "own", ["master", "agent1", "agent2"])
    spec = ClusterSpec(tmp_path, own, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master")])
    _make_signer(spec, "master")
    return own, spec


def _expiring_cert(own, name: str, key: pkilib.PrivateKey, days: int = 10):
    ca_cert, ca_key = pkilib.load_ca(own.directory)
    now = dt.datetime.now(dt.timezone.utc)
    cert, _ = pkilib.issue_certificate(ca_cert, ca_key, name, key=key,
                                       not_before=now - dt.timedelta(days=380),
                                       not_after=now + dt.timedelta(days=days))
    return cert


async def _ask(peer: FakePeer, cert, request_id: str):
    peer.send(REQ, {"cert_request": pkilib.certificate_pem(cert), "ticket": ""},
              id=request_id)
    await wait_until(lambda: [m for m in peer.received if m.get("id") == request_id],
                     what=f"answer to {request_id}")
    [answer] = [m for m in peer.received if m.get("id") == request_id]
    return answer["result"]


def test_forged_and_foreign_renewal_proofs_are_not_signed(tmp_path, run):
    """A proof that does not verify is refused and counted; a proof for a certificate
    another CA signed, or one that is still current, earns nothing without a ticket."""
    own, spec = _master_and_peer_setup(tmp_path)
    agent_key = pkilib.load_private_key(own.key("agent1"))
    expiring = _expiring_cert(own, "agent1", agent_key)

    async def main():
        master = await spec.start("master")
        try:
            peer = await FakePeer.connect(spec.port("master"), own, "agent1",
                                          server_name="master")
            await wait_until(lambda: "agent1" in master.node.connections, what="agent1")
            # a proof signed by a key that is not the previous certificate's
            thief = pkilib.generate_key("ec")
            stolen = pkilib.rekey_request(
                pkilib.self_signed_certificate(thief, "agent1"), thief,
                pkilib.generate_key("ec"))
            forged = _replace_previous(stolen, expiring)
            result = await _ask(peer, forged, "r1")
            assert result["status_code"] == 1 and "does not verify" in result["error"]
            # a previous certificate from another CA: a plain request, pending
            other = make_test_pki(tmp_path / "other", [], other_ca_names=["agent1"])
            other_key = pkilib.load_private_key(other.key("agent1"))
            foreign = pkilib.rekey_request(pkilib.load_certificates(other.cert("agent1"))[0],
                                           other_key, pkilib.generate_key("ec"))
            result = await _ask(peer, foreign, "r2")
            assert result["status_code"] == 2, result
            # a previous certificate that is current: Icinga's "valid and uptodate"
            current = pkilib.load_certificates(own.cert("agent1"))[0]
            early = pkilib.rekey_request(current, agent_key, pkilib.generate_key("ec"))
            result = await _ask(peer, early, "r3")
            assert result["status_code"] == 1 and "uptodate" in result["error"]
            # and a due one is signed, for the new key
            new_key = pkilib.generate_key("ec")
            good = pkilib.rekey_request(expiring, agent_key, new_key)
            result = await _ask(peer, good, "r4")
            assert result["status_code"] == 0, result
            assert pkilib.same_public_key(pkilib.parse_request(result["cert"]), new_key)
            text = await metrics_text(master)
            assert _metric(text, 'router_csr_requests_total{result="signed"}') == 1
            assert _metric(text, 'router_csr_requests_total{result="refused"}') == 1
            assert _metric(text, 'router_messages_refused_total{endpoint="agent1",method='
                           f'"{REQ}",reason="bad_renewal_proof"}}') == 1
            await peer.close()
        finally:
            await master.stop()

    run(main())


def _replace_previous(request, previous):
    """``request`` with its previous-certificate extension swapped for ``previous`` (the
    proof inside stays the thief's), self-signed again with a fresh key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    key = pkilib.generate_key("ec")
    builder = (x509.CertificateBuilder().subject_name(request.subject)
               .issuer_name(request.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(request.not_valid_before_utc)
               .not_valid_after(request.not_valid_after_utc))
    for ext in request.extensions:
        value = ext.value
        if ext.oid == PREVIOUS_OID:
            value = x509.UnrecognizedExtension(
                ext.oid, previous.public_bytes(serialization.Encoding.DER))
        builder = builder.add_extension(value, ext.critical)
    return builder.sign(key, hashes.SHA256())


def test_signed_certificate_for_neither_key_is_not_installed(tmp_path, run, caplog):
    """While a new key waits, an update for a third key is refused; both keys stay."""
    own, spec = _master_and_peer_setup(tmp_path)
    spec = ClusterSpec(tmp_path, own, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])
    key = pkilib.load_private_key(own.key("agent1"))
    pkilib.write_certificate(own.cert("agent1"), _expiring_cert(own, "agent1", key))
    pending = Path(f"{own.key('agent1')}.new")
    waiting = pkilib.generate_key("ec")
    pkilib.write_private_key(pending, waiting)
    listener = FakePeerServer()

    async def main():
        await listener.start(own, "master")
        spec.ports["master"] = listener.port
        spec.dialled = {"master"}
        agent = await spec.start("agent1", listen=False)
        try:
            peer = await listener.accepted()
            await wait_until(lambda: peer.messages(REQ), what="the agent's request")
            params = peer.messages(REQ)[0]["params"]
            request = pkilib.parse_request(params["cert_request"])
            assert pkilib.same_public_key(request, waiting)     # the key it kept is reused
            ca_cert, ca_key = pkilib.load_ca(own.directory)
            stranger, _ = pkilib.issue_certificate(ca_cert, ca_key, "agent1")
            peer.send(UPD, {"cert": pkilib.certificate_pem(stranger), "status_code": 0,
                            "fingerprint_request": pkilib.fingerprint(request)})
            await wait_until(lambda: "certifies a key we do not hold" in caplog.text,
                             what="the refusal")
            assert pkilib.same_public_key(pkilib.load_certificates(own.cert("agent1"))[0],
                                          key)
            assert pending.exists()
            signed = pkilib.sign_request(ca_cert, ca_key, request)
            peer.send(UPD, {"cert": pkilib.certificate_pem(signed), "status_code": 0,
                            "fingerprint_request": pkilib.fingerprint(request)})
            await wait_until(lambda: not pending.exists(), what="the new pair installed")
            assert pkilib.same_public_key(pkilib.load_certificates(own.cert("agent1"))[0],
                                          waiting)
        finally:
            await agent.stop()
            await listener.stop()

    run(main(), timeout=30)


class FakePeerServer:
    """A parent that is a script: accepts the agent's connection over real TLS."""

    def __init__(self) -> None:
        import asyncio

        self._accepted: asyncio.Queue[FakePeer] = asyncio.Queue()
        self._server = None
        self.port = 0

    async def start(self, own, name: str) -> None:
        import asyncio
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(own.cert(name), own.key(name))
        ctx.load_verify_locations(own.ca_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED

        async def on_connect(reader, writer):
            peer = FakePeer(reader, writer)
            peer.send("icinga::Hello", {"capabilities": 1, "version": 21306})
            await self._accepted.put(peer)

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def accepted(self) -> FakePeer:
        import asyncio

        return await asyncio.wait_for(self._accepted.get(), 15)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
