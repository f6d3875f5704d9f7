"""Certificate enrollment end to end over TLS on 127.0.0.1: a real signing master (and a
satellite without the CA key) with scripted requesters (router.node.enrollment)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from router import pki as pkilib
from tests.nodeutil import ClusterSpec, FakePeer, metrics_text, wait_until
from tests.pkiutil import make_test_pki

SALT = "example-salt"
REQ = "pki::RequestCertificate"
UPD = "pki::UpdateCertificate"


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat", "agent1", "m1", "m2"])


@pytest.fixture(scope="module")
def newcomer() -> tuple[pkilib.PrivateKey, x509.Certificate]:
    """A node that is not enrolled yet: its key and self-signed certificate."""
    key = pkilib.generate_key("ec")
    return key, pkilib.self_signed_certificate(key, "newagent")


def make_signer(spec: ClusterSpec, name: str) -> Path:
    """Give ``name``'s data directory the CA key pair (it becomes the signing master)."""
    ca_dir = spec.directory / name / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(spec.pki.ca_cert, ca_dir / "ca.crt")
    shutil.copy(spec.pki.ca_key, ca_dir / "ca.key")
    return ca_dir


def master_only(tmp_path, pki) -> ClusterSpec:
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    make_signer(spec, "master")
    return spec


def pki_table(salt: str | None, extra: str = "") -> str:
    lines = ["[pki]"]
    if salt is not None:
        lines.append(f'ticket_salt = "{salt}"')
    if extra:
        lines.append(extra)
    return "\n".join(lines)


async def anonymous(port: int, pki) -> FakePeer:
    peer = await FakePeer.connect(port, pki, None, server_name="master")
    await wait_until(lambda: peer.messages("icinga::Hello"), what="hello")
    return peer


async def ask(peer: FakePeer, cert: x509.Certificate, ticket: str = "", *,
              request_id: str = "r1") -> dict[str, Any]:
    peer.send(REQ, {"cert_request": pkilib.certificate_pem(cert), "ticket": ticket},
              id=request_id)
    await wait_until(lambda: [m for m in peer.received if m.get("id") == request_id],
                     what=f"answer to {request_id}")
    [answer] = [m for m in peer.received if m.get("id") == request_id]
    return answer["result"]


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix!r} not in metrics")


def requests_dir(spec: ClusterSpec, name: str) -> Path:
    return spec.directory / name / "certificate-requests"


def test_valid_ticket_is_signed_at_once(tmp_path, pki, newcomer, run):
    key, cert = newcomer
    spec = master_only(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, cert, pkilib.ticket("newagent", SALT))
            assert result["status_code"] == 0, result
            signed = pkilib.parse_request(result["cert"])
            assert pkilib.same_public_key(signed, key)
            assert pkilib.common_name(signed) == "newagent"
            ca = pkilib.load_certificates(pki.ca_cert)[0]
            assert pkilib.signed_by(signed, ca)
            assert pkilib.parse_request(result["ca"]) == ca
            assert result["fingerprint_request"] == pkilib.fingerprint(cert)
            # ... and pushed as pki::UpdateCertificate, as Icinga does
            await wait_until(lambda: peer.messages(UPD), what="update")
            assert peer.messages(UPD)[0]["params"]["cert"] == result["cert"]
            assert "ts" not in peer.messages(UPD)[0]
            assert not requests_dir(spec, "master").exists()   # nothing stored
            text = await metrics_text(master)
            assert metric(text, "router_csr_requests_total", result="signed") == 1
            assert metric(text, "router_csr_pending") == 0
            assert metric(text, "router_cert_expiry_seconds", endpoint="master") > 86400
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_wrong_ticket_is_refused_and_nothing_stored(tmp_path, pki, newcomer, run, caplog):
    spec = master_only(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, newcomer[1], pkilib.ticket("otheragent", SALT))
            assert result["status_code"] == 1
            assert result["error"] == "Invalid ticket for CN 'newagent'."
            assert "cert" not in result and not peer.messages(UPD)
            assert not requests_dir(spec, "master").exists()
            text = await metrics_text(master)
            assert metric(text, "router_csr_requests_total", result="invalid_ticket") == 1
            assert 'reason="invalid_ticket"' in text
            await peer.close()
        finally:
            await master.stop()

    run(main())
    assert "Invalid ticket for CN 'newagent'" in caplog.text


def test_pending_then_ca_sign_is_delivered_to_the_connected_requester(
        tmp_path, pki, newcomer, run):
    """No ticket: stored, status 2; 'router ca sign' on the running node's data directory
    reaches the requester that is still connected, without a restart."""
    key, cert = newcomer
    spec = master_only(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=pki_table(None))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, cert)
            fp = pkilib.fingerprint(cert)
            assert result == {
                "status_code": 2, "fingerprint_request": fp, "ca": result["ca"],
                "error": "Certificate request for CN 'newagent' is pending. Waiting for "
                         "approval from the parent Icinga instance."}
            store = pkilib.RequestStore(spec.directory / "master")
            assert store.get(fp) is not None and not store.get(fp).signed
            text = await metrics_text(master)
            assert metric(text, "router_csr_pending") == 1
            assert metric(text, "router_csr_requests_total", result="pending") == 1
            # the operator signs (what `router ca sign` does, see test_pki_cli.py)
            ca_cert, ca_key = pkilib.load_ca(spec.directory / "master" / "ca")
            store.set_response(fp, pkilib.certificate_pem(
                pkilib.sign_request(ca_cert, ca_key, cert)))
            await wait_until(lambda: peer.messages(UPD), timeout=5, what="delivery")
            update = peer.messages(UPD)[0]["params"]
            assert update["status_code"] == 0 and update["fingerprint_request"] == fp
            assert pkilib.same_public_key(pkilib.parse_request(update["cert"]), key)
            text = await metrics_text(master)
            assert metric(text, "router_csr_pending") == 0
            # the next request is answered from the file
            again = await ask(peer, cert, request_id="r2")
            assert again["status_code"] == 0 and again["cert"] == update["cert"]
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_declined_request(tmp_path, pki, newcomer, run):
    spec = master_only(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            peer = await anonymous(spec.port("master"), pki)
            assert (await ask(peer, newcomer[1]))["status_code"] == 2
            pkilib.RequestStore(spec.directory / "master").remove(
                pkilib.fingerprint(newcomer[1]))
            # even a valid ticket does not undo the operator's decision
            result = await ask(peer, newcomer[1], pkilib.ticket("newagent", SALT),
                               request_id="r2")
            assert result["status_code"] == 1
            assert result["error"] == "Ticket for CN newagent declined by administrator."
            text = await metrics_text(master)
            assert metric(text, "router_csr_requests_total", result="declined") == 1
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_current_certificate_is_not_renewed(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])
    make_signer(spec, "master")

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            agent.send(REQ, {"ticket": ""}, id="x")
            await wait_until(lambda: [m for m in agent.received if m.get("id") == "x"],
                             what="answer")
            [answer] = [m for m in agent.received if m.get("id") == "x"]
            assert answer["result"] == {
                "status_code": 1, "error": "The certificate for CN 'agent1' is valid and "
                                           "uptodate. Skipping automated renewal."}
            agent.send(REQ, {"ticket": ""})             # the id-less form gets nothing
            await asyncio.sleep(0.3)
            assert not agent.messages(UPD) and not agent.closed
            text = await metrics_text(master)
            assert metric(text, "router_cert_expiry_seconds", endpoint="agent1") > 86400
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_renewal_of_an_expiring_certificate_needs_no_ticket(tmp_path, pki, run):
    import datetime as dt

    spec = master_only(tmp_path, pki)
    ca_cert, ca_key = pkilib.load_ca(spec.directory / "master" / "ca")
    now = dt.datetime.now(dt.timezone.utc)
    old, key = pkilib.issue_certificate(ca_cert, ca_key, "oldagent",
                                        not_before=now - dt.timedelta(days=380),
                                        not_after=now + dt.timedelta(days=10))

    async def main():
        master = await spec.start("master", extra=pki_table(None))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, old)
            assert result["status_code"] == 0, result
            new = pkilib.parse_request(result["cert"])
            assert pkilib.same_public_key(new, key)
            assert new.not_valid_after_utc > now + dt.timedelta(days=390)
            await peer.close()
        finally:
            await master.stop()

    run(main())


@pytest.mark.parametrize("renew_before_days, renewed", [(30, False), (120, True)])
def test_renewal_window_is_configurable(tmp_path, pki, run, renew_before_days, renewed):
    """[pki] renew_before_days: a certificate of ours with 100 days left is up to date
    under Icinga's 30-day window and renewed under a 120-day one."""
    import datetime as dt

    spec = master_only(tmp_path, pki)
    ca_cert, ca_key = pkilib.load_ca(spec.directory / "master" / "ca")
    now = dt.datetime.now(dt.timezone.utc)
    old, key = pkilib.issue_certificate(ca_cert, ca_key, "soonagent",
                                        not_before=now - dt.timedelta(days=297),
                                        not_after=now + dt.timedelta(days=100))

    async def main():
        master = await spec.start("master", extra=pki_table(
            None, f"renew_before_days = {renew_before_days}"))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, old)
            if renewed:
                assert result["status_code"] == 0, result
                new = pkilib.parse_request(result["cert"])
                assert pkilib.same_public_key(new, key)
                assert new.not_valid_after_utc > now + dt.timedelta(days=390)
            else:
                assert result["status_code"] == 1
                assert "valid and uptodate" in result["error"]
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_revoked_certificate_is_not_renewed(tmp_path, pki, run):
    import datetime as dt

    spec = master_only(tmp_path, pki)
    ca_dir = spec.directory / "master" / "ca"
    ca_cert, ca_key = pkilib.load_ca(ca_dir)
    now = dt.datetime.now(dt.timezone.utc)
    old, _ = pkilib.issue_certificate(ca_cert, ca_key, "gone",
                                      not_before=now - dt.timedelta(days=380),
                                      not_after=now + dt.timedelta(days=10))
    pkilib.revoke(ca_cert, ca_key, ca_dir / "ca.crl", [old])

    async def main():
        master = await spec.start("master", extra=pki_table(None))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, old)
            assert result["status_code"] == 1 and "is revoked" in result["error"]
            assert "cert" not in result
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_key_policy_and_bad_requests_are_refused(tmp_path, pki, run):
    from cryptography.hazmat.primitives.asymmetric import rsa

    spec = master_only(tmp_path, pki)
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = pkilib.self_signed_certificate(weak_key, "weak")

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, weak, pkilib.ticket("weak", SALT))
            assert result["status_code"] == 1 and "below the minimum" in result["error"]
            peer.send(REQ, {"cert_request": "-----BEGIN CERTIFICATE-----\ngarbage\n",
                            "ticket": ""}, id="bad")
            await wait_until(lambda: [m for m in peer.received if m.get("id") == "bad"],
                             what="answer")
            [bad] = [m for m in peer.received if m.get("id") == "bad"]
            assert bad["result"]["status_code"] == 1
            assert "unusable" in bad["result"]["error"]
            # no certificate at all (anonymous TLS, no cert_request)
            peer.send(REQ, {"ticket": ""}, id="none")
            await wait_until(lambda: [m for m in peer.received if m.get("id") == "none"],
                             what="answer")
            [none] = [m for m in peer.received if m.get("id") == "none"]
            assert none["result"] == {"status_code": 1,
                                      "error": "No certificate or CSR received."}
            text = await metrics_text(master)
            assert metric(text, "router_csr_requests_total", result="refused") == 3
            assert not peer.closed               # the node stays up for everybody
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_anonymous_flood_is_rate_limited_and_pending_capped(tmp_path, pki, run, caplog):
    spec = master_only(tmp_path, pki)
    certs = [pkilib.self_signed_certificate(pkilib.generate_key("ec"), f"flood{i}")
             for i in range(4)]

    async def main():
        master = await spec.start("master", extra=pki_table(
            None, "requests_per_minute = 3\nmax_pending_requests = 2"))
        try:
            peer = await anonymous(spec.port("master"), pki)
            r0 = await ask(peer, certs[0], request_id="0")
            r1 = await ask(peer, certs[1], request_id="1")
            assert r0["status_code"] == r1["status_code"] == 2
            r2 = await ask(peer, certs[2], request_id="2")
            assert r2["status_code"] == 1 and "max_pending_requests" in r2["error"]
            peer.send(REQ, {"cert_request": pkilib.certificate_pem(certs[3]),
                            "ticket": ""}, id="3")
            await peer.wait_closed()
            [r3] = [m for m in peer.received if m.get("id") == "3"]
            assert "too many certificate requests" in r3["result"]["error"]
            assert len(pkilib.RequestStore(spec.directory / "master").list().requests) == 2
            text = await metrics_text(master)
            assert metric(text, "router_csr_requests_total", result="refused") == 2
            assert 'reason="rate_limited"' in text and 'reason="too_many_pending"' in text
            # other peers are unaffected: a configured endpoint still gets its answer
            await peer.close()
        finally:
            await master.stop()

    run(main())
    assert "too many certificate requests from 127.0.0.1" in caplog.text


def test_expensive_steps_have_a_node_wide_budget(tmp_path, pki, newcomer, run):
    """Many wrong tickets (PBKDF2 each) are cut off node-wide, not only per address."""
    spec = master_only(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=pki_table(SALT, "requests_per_minute = 1000"))
        try:
            peer = await anonymous(spec.port("master"), pki)
            for i in range(40):
                peer.send(REQ, {"cert_request": pkilib.certificate_pem(newcomer[1]),
                                "ticket": "0" * 40}, id=str(i))
            await wait_until(lambda: len([m for m in peer.received if "id" in m]) == 40,
                             what="40 answers")
            errors = [m["result"]["error"] for m in peer.received if "id" in m]
            busy = [e for e in errors if "busy" in e]
            assert 10 <= len(busy) <= 20, errors
            assert errors.count("Invalid ticket for CN 'newagent'.") == 40 - len(busy)
            text = await metrics_text(master)
            assert 'reason="busy"' in text
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_satellite_forwards_and_delivers(tmp_path, pki, newcomer, run):
    """An agent enrolls through a satellite without the CA key: pending there, signed by
    the master with the ticket, stored on the satellite and pushed to the agent that is
    still connected; a later request is answered from the satellite's file."""
    key, cert = newcomer
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat"], "master")], dialled={"master"})
    make_signer(spec, "master")

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        sat = await spec.start("sat")
        try:
            await wait_until(lambda: "sat" in master.node.connected_names
                             and "master" in sat.node.connected_names, what="sat up")
            peer = await anonymous(spec.port("sat"), pki)
            result = await ask(peer, cert, pkilib.ticket("newagent", SALT))
            assert result["status_code"] == 2
            fp = result["fingerprint_request"]
            await wait_until(lambda: peer.messages(UPD), timeout=10, what="delivery")
            update = peer.messages(UPD)[0]["params"]
            assert update["fingerprint_request"] == fp
            assert pkilib.same_public_key(pkilib.parse_request(update["cert"]), key)
            stored = pkilib.RequestStore(spec.directory / "sat").get(fp)
            assert stored is not None and stored.cert_response == update["cert"]
            again = await ask(peer, cert, request_id="r2")
            assert again["status_code"] == 0 and again["cert"] == update["cert"]
            text = await metrics_text(sat)
            assert metric(text, "router_csr_requests_total", result="forwarded") == 1
            assert metric(text, "router_cert_expiry_seconds", endpoint="master") > 0
            text = await metrics_text(master)
            assert metric(text, "router_csr_requests_total", result="signed") == 1
            await peer.close()
        finally:
            await sat.stop()
            await master.stop()

    run(main())


def test_satellite_sends_pending_requests_when_its_parent_connects(tmp_path, pki, newcomer,
                                                                   run):
    """The master is down when the agent asks; the request reaches it once it is up."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat"], "master")], dialled={"master"},
                       timeouts="reconnect_min = 0.2\nreconnect_max = 0.5")
    make_signer(spec, "master")

    async def main():
        sat = await spec.start("sat")
        master = None
        try:
            peer = await anonymous(spec.port("sat"), pki)
            result = await ask(peer, newcomer[1], pkilib.ticket("newagent", SALT))
            assert result["status_code"] == 2
            master = await spec.start("master", extra=pki_table(SALT))
            await wait_until(lambda: peer.messages(UPD), timeout=15, what="delivery")
            await peer.close()
        finally:
            await sat.stop()
            if master is not None:
                await master.stop()

    run(main())


def test_update_certificate_only_from_the_parent(tmp_path, pki, newcomer, run, caplog):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])

    async def main():
        master = await spec.start("master")
        try:
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            anon = await anonymous(spec.port("master"), pki)
            update = {"status_code": 0, "cert": pkilib.certificate_pem(newcomer[1]),
                      "ca": "", "fingerprint_request": "ab" * 32}
            agent.send(UPD, update)
            anon.send(UPD, update)
            await wait_until(lambda: master.node.stats["agent1"].refused, what="refusal")
            await asyncio.sleep(0.2)
            assert not list((spec.directory / "master").glob("certificate-requests/*"))
            await agent.close()
            await anon.close()
        finally:
            await master.stop()

    run(main())
    assert "refused pki::UpdateCertificate" in caplog.text


def test_own_certificate_update_installed_only_for_our_key(tmp_path, pki, run, caplog):
    """A satellite whose parent (a scripted master) pushes certificates for its name."""
    import datetime as dt

    own_pki = make_test_pki(tmp_path / "own", ["sat", "master"])  # files we may replace
    spec = ClusterSpec(tmp_path, own_pki, [("master", ["master"], None),
                                           ("sat", ["sat"], "master")])
    ca_cert, ca_key = pkilib.load_ca(tmp_path / "own")
    own_key = pkilib.load_private_key(own_pki.key("sat"))
    fresh, _ = pkilib.issue_certificate(ca_cert, ca_key, "sat", key=own_key,
                                        not_after=dt.datetime.now(dt.timezone.utc)
                                        + dt.timedelta(days=700))
    foreign, _ = pkilib.issue_certificate(ca_cert, ca_key, "sat", key_type="ec")
    pkilib.create_ca(tmp_path / "evil-ca")
    evil_cert, evil_key = pkilib.load_ca(tmp_path / "evil-ca")
    evil, _ = pkilib.issue_certificate(evil_cert, evil_key, "sat", key=own_key)

    async def main():
        sat = await spec.start("sat")
        try:
            master = await FakePeer.connect(spec.port("sat"), own_pki, "master",
                                            server_name="sat")
            await wait_until(lambda: "master" in sat.node.connections, what="master up")
            before = sat.node.server_context
            master.send(UPD, {"status_code": 0, "cert": pkilib.certificate_pem(foreign),
                              "ca": pkilib.certificate_pem(ca_cert),
                              "fingerprint_request": "ab" * 32})
            # our key, but another CA (that comes along): neither installed nor trusted
            master.send(UPD, {"status_code": 0, "cert": pkilib.certificate_pem(evil),
                              "ca": pkilib.certificate_pem(evil_cert),
                              "fingerprint_request": "ef" * 32})
            await asyncio.sleep(0.3)
            assert pkilib.load_certificates(own_pki.cert("sat"))[0] not in (foreign, evil)
            assert pkilib.load_certificates(own_pki.ca_cert)[0] == ca_cert
            master.send(UPD, {"status_code": 0, "cert": pkilib.certificate_pem(fresh),
                              "ca": pkilib.certificate_pem(ca_cert),
                              "fingerprint_request": "cd" * 32})
            await wait_until(lambda: pkilib.load_certificates(own_pki.cert("sat"))[0] == fresh,
                             what="installed")
            assert sat.node.server_context is not before      # new sessions use it
            await master.close()
        finally:
            await sat.stop()

    run(main())
    assert "certifies a key we do not hold" in caplog.text
    assert "is not signed by the CA in" in caplog.text
    assert "installed our new certificate" in caplog.text


def test_ha_master_without_the_ca_key_forwards_to_its_peer(tmp_path, pki, newcomer, run):
    """Two masters, only m1 holds the CA: a request at m2 is signed by m1 (users.md P14)."""
    key, cert = newcomer
    spec = ClusterSpec(tmp_path, pki, [("master", ["m1", "m2"], None)], dialled={"m1"})
    make_signer(spec, "m1")

    async def main():
        m1 = await spec.start("m1", extra=pki_table(SALT))
        m2 = await spec.start("m2")
        try:
            await wait_until(lambda: "m1" in m2.node.connected_names
                             and "m2" in m1.node.connected_names, what="HA pair up")
            peer = await FakePeer.connect(spec.port("m2"), pki, None, server_name="m2")
            result = await ask(peer, cert, pkilib.ticket("newagent", SALT))
            assert result["status_code"] == 2
            await wait_until(lambda: peer.messages(UPD), timeout=10, what="delivery")
            signed = pkilib.parse_request(peer.messages(UPD)[0]["params"]["cert"])
            assert pkilib.same_public_key(signed, key)
            await peer.close()
        finally:
            await m2.stop()
            await m1.stop()

    run(main())


def _expiring(directory, name: str, ca_cert, ca_key, days: int = 10) -> None:
    """Replace ``name``'s certificate in ``directory`` by one with ``days`` left."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    key = pkilib.load_private_key(directory / f"{name}.key")
    cert, _ = pkilib.issue_certificate(ca_cert, ca_key, name, key=key,
                                       not_before=now - dt.timedelta(days=380),
                                       not_after=now + dt.timedelta(days=days))
    pkilib.write_certificate(directory / f"{name}.crt", cert)


def _days_left(path) -> float:
    import datetime as dt

    cert = pkilib.load_certificates(path)[0]
    return (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days


def test_satellite_renews_its_own_certificate_through_the_master(tmp_path, run, caplog):
    own_pki = make_test_pki(tmp_path / "own", ["master", "sat"])   # files we may replace
    ca_cert, ca_key = pkilib.load_ca(tmp_path / "own")
    _expiring(tmp_path / "own", "sat", ca_cert, ca_key)
    spec = ClusterSpec(tmp_path, own_pki, [("master", ["master"], None),
                                           ("sat", ["sat"], "master")], dialled={"master"})
    make_signer(spec, "master")
    old_key = pkilib.load_private_key(own_pki.key("sat"))

    async def main():
        master = await spec.start("master")
        sat = await spec.start("sat")
        try:
            await wait_until(lambda: _days_left(own_pki.cert("sat")) > 300, timeout=10,
                             what="the satellite's renewed certificate")
            renewed = pkilib.load_certificates(own_pki.cert("sat"))[0]
            new_key = pkilib.load_private_key(own_pki.key("sat"))
            assert pkilib.same_public_key(renewed, new_key)
            assert not pkilib.same_public_key(renewed, old_key)     # a new key (default)
            assert own_pki.key("sat").stat().st_mode & 0o777 == 0o600
            assert not Path(f"{own_pki.key('sat')}.new").exists()
            text = await metrics_text(master)
            assert metric(text, "router_csr_requests_total", result="signed") == 1
        finally:
            await sat.stop()
            await master.stop()

    run(main())
    assert "asked master for our new key" in caplog.text
    assert "installed our new certificate and key" in caplog.text


def test_renewal_keeps_the_key_when_configured(tmp_path, run, caplog):
    """``[pki] renew_with_new_key = false``: Icinga's renewal, the same key re-signed."""
    own_pki = make_test_pki(tmp_path / "own", ["master", "sat"])
    ca_cert, ca_key = pkilib.load_ca(tmp_path / "own")
    _expiring(tmp_path / "own", "sat", ca_cert, ca_key)
    spec = ClusterSpec(tmp_path, own_pki, [("master", ["master"], None),
                                           ("sat", ["sat"], "master")], dialled={"master"})
    make_signer(spec, "master")
    old_key = pkilib.load_private_key(own_pki.key("sat"))

    async def main():
        master = await spec.start("master")
        sat = await spec.start("sat", extra=pki_table(None, "renew_with_new_key = false"))
        try:
            await wait_until(lambda: _days_left(own_pki.cert("sat")) > 300, timeout=10,
                             what="the satellite's renewed certificate")
            renewed = pkilib.load_certificates(own_pki.cert("sat"))[0]
            assert pkilib.same_public_key(renewed, old_key)
            assert not Path(f"{own_pki.key('sat')}.new").exists()
        finally:
            await sat.stop()
            await master.stop()

    run(main())
    assert "asked master to renew it" in caplog.text


def test_signer_renews_its_own_certificate_locally(tmp_path, run, caplog):
    own_pki = make_test_pki(tmp_path / "own", ["master"])
    ca_cert, ca_key = pkilib.load_ca(tmp_path / "own")
    _expiring(tmp_path / "own", "master", ca_cert, ca_key)
    spec = ClusterSpec(tmp_path, own_pki, [("master", ["master"], None)])
    make_signer(spec, "master")
    old_key = pkilib.load_private_key(own_pki.key("master"))

    async def main():
        master = await spec.start("master")
        try:
            await wait_until(lambda: _days_left(own_pki.cert("master")) > 300, timeout=5,
                             what="renewed locally")
            renewed = pkilib.load_certificates(own_pki.cert("master"))[0]
            assert pkilib.same_public_key(renewed,
                                          pkilib.load_private_key(own_pki.key("master")))
            assert not pkilib.same_public_key(renewed, old_key)
            text = await metrics_text(master)
            assert metric(text, "router_cert_expiry_seconds", endpoint="master") > 300 * 86400
        finally:
            await master.stop()

    run(main())
    assert "renewed our own certificate with the local CA and a new key" in caplog.text


def test_missing_ca_file_is_a_refusal_not_a_crash(tmp_path, newcomer, run):
    own_pki = make_test_pki(tmp_path / "own", ["master"])
    spec = master_only(tmp_path, own_pki)

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            peer = await anonymous(spec.port("master"), own_pki)
            saved = own_pki.ca_cert.read_bytes()
            own_pki.ca_cert.unlink()
            result = await ask(peer, newcomer[1], pkilib.ticket("newagent", SALT))
            assert result["status_code"] == 1 and "CA certificate" in result["error"]
            own_pki.ca_cert.write_bytes(saved)
            again = await ask(peer, newcomer[1], pkilib.ticket("newagent", SALT),
                              request_id="r2")
            assert again["status_code"] == 0
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_a_failing_disk_is_a_refusal_not_a_crash(tmp_path, pki, newcomer, run, caplog):
    spec = master_only(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        try:
            def disk_full(*args, **kwargs):
                raise OSError(28, "No space left on device")
            master.node.enrollment.store.save_pending = disk_full
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, newcomer[1])
            assert result["status_code"] == 1
            assert "No space left on device" in result["error"]
            assert not peer.closed
            text = await metrics_text(master)
            assert 'reason="error"' in text
            await peer.close()
        finally:
            await master.stop()

    run(main())
    assert "certificate request failed" in caplog.text


def test_the_ca_key_is_loaded_once_until_its_files_change(tmp_path, pki, newcomer, run,
                                                          monkeypatch):
    """Loading an RSA key validates it (about 100 ms for a 4096-bit CA key): signing must
    not pay that per request (perf/bench_signing.py)."""
    spec = master_only(tmp_path, pki)
    loads = []
    real_load_ca = pkilib.load_ca
    monkeypatch.setattr(pkilib, "load_ca", lambda d: loads.append(d) or real_load_ca(d))

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            peer = await anonymous(spec.port("master"), pki)
            for i in range(3):
                result = await ask(peer, newcomer[1], pkilib.ticket("newagent", SALT),
                                   request_id=str(i))
                assert result["status_code"] == 0
            assert len(loads) == 1
            key_path = spec.directory / "master" / "ca" / "ca.key"
            key_path.write_bytes(key_path.read_bytes())        # an operator replaced it
            import os
            st = key_path.stat()
            os.utime(key_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
            assert (await ask(peer, newcomer[1], pkilib.ticket("newagent", SALT),
                              request_id="x"))["status_code"] == 0
            assert len(loads) == 2
            await peer.close()
        finally:
            await master.stop()

    run(main())


def test_pipelined_requests_are_answered_in_order(tmp_path, pki, run):
    """The CPU work runs in a worker thread; the answers still come in request order,
    whatever each one costs (ticket check and signature, a refusal, a pending store)."""
    spec = master_only(tmp_path, pki)
    keys = [pkilib.generate_key("ec") for _ in range(4)]
    certs = [pkilib.self_signed_certificate(k, f"pipelined{i}") for i, k in enumerate(keys)]
    tickets = [pkilib.ticket("pipelined0", SALT), "00" * 20, "",
               pkilib.ticket("pipelined3", SALT)]

    async def main():
        master = await spec.start("master", extra=pki_table(SALT))
        try:
            peer = await anonymous(spec.port("master"), pki)
            for i, (cert, ticket) in enumerate(zip(certs, tickets)):
                peer.send(REQ, {"cert_request": pkilib.certificate_pem(cert),
                                "ticket": ticket}, id=f"p{i}")
            await wait_until(lambda: len([m for m in peer.received if "id" in m]) == 4,
                             what="four answers")
            answers = [m for m in peer.received if "id" in m]
            assert [m["id"] for m in answers] == ["p0", "p1", "p2", "p3"]
            assert [m["result"]["status_code"] for m in answers] == [0, 1, 2, 0]
            assert "Invalid ticket" in answers[1]["result"]["error"]
            await peer.close()
        finally:
            await master.stop()

    run(main())
