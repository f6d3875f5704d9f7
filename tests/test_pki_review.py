"""PKI faults a review found (2026-12-07), each failing on the code before its fix: a
certificate the old CA revoked renewed by the new one during a rollover; a handshake in
flight across a reload that brought a CRL; a reload undoing our own renewal; a
``router ca sign`` hidden by our own write to the request store; the pending request of
``router pki request --new-key`` lost at the next start; a reload taking a key others
may read."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import ssl
import time
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509

from router import pki as pkilib
from router.cli import main
from router.node import enrollment as enrollment_mod
from router.node import reload as reload_mod
from tests.nodeutil import (ClusterSpec, FakePeer, client_ssl_context, inbound_count,
                            metrics_text, wait_until)
from tests.pkiutil import make_test_pki
from tests.test_crl import _ca_revoke
from tests.test_enrollment import UPD, anonymous, ask, make_signer, master_only, metric, pki_table


# A certificate revoked by the old CA is renewed (without a ticket) by the new CA during
# a CA rollover (docs/pki.md "CA rollover" steps 2-4).
#
# After step 3 (``mv ca ca-old; mv ca-new ca``) the old CA's CRL is in ``ca-old/ca.crl``;
# the signer's renewal check (enrollment._revoked) only reads ``DATA_DIR/ca/ca.crl``.
# An old-CA certificate still chains to the bundle in ``certs/ca.crt`` (step 2), so a due,
# revoked one is "signed by our CA" and is re-signed by the new CA for the same key: the
# revoked (maybe stolen) key gets a fresh certificate that survives dropping the old CA.


def test_cert_revoked_by_old_ca_is_not_renewed_by_new_ca(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    ca_dir = make_signer(spec, "master")                    # DATA_DIR/ca = the old CA
    old_ca, old_key = pkilib.load_ca(ca_dir)
    now = dt.datetime.now(dt.timezone.utc)
    victim, _ = pkilib.issue_certificate(old_ca, old_key, "agent1",
                                         not_before=now - dt.timedelta(days=380),
                                         not_after=now + dt.timedelta(days=10))
    # The operator revokes agent1 (router ca revoke) before the rollover.
    pkilib.revoke(old_ca, old_key, ca_dir / pkilib.CRL_NAME, [victim])

    # Step 1: a new CA beside the old one. Step 2: [tls] ca = bundle new + old.
    new_dir = spec.directory / "master" / "ca-new"
    pkilib.create_ca(new_dir, common_name="Router CA")
    bundle = (new_dir / "ca.crt").read_bytes() + pki.ca_cert.read_bytes()
    pki.ca_cert.write_bytes(bundle)
    # Step 3: switch the signer to the new CA.
    os.rename(ca_dir, spec.directory / "master" / "ca-old")
    os.rename(new_dir, ca_dir)
    new_ca = pkilib.load_certificates(ca_dir / "ca.crt")[0]

    async def main():
        master = await spec.start("master", extra=pki_table(None))
        try:
            peer = await anonymous(spec.port("master"), pki)
            result = await ask(peer, victim)
            signed = (pkilib.parse_request(result["cert"]) if "cert" in result else None)
            assert result["status_code"] != 0 and signed is None, (
                "revoked certificate renewed by the new CA: "
                f"signed by new CA={signed is not None and pkilib.signed_by(signed, new_ca)}"
                f", same key={signed is not None and pkilib.same_public_key(signed, victim)}")
            await peer.close()
        finally:
            await master.stop()

    run(main())


# A revoked certificate is admitted after a reload that adds it to ``[tls] crl_file``
# when its connection was accepted before the reload and handshakes after it.
#
# PeerConnection keeps the TLS library it was made with (node.new_inbound captures
# ``node.server_context`` at accept time; connection.py makes the session from it on the
# first record). reload.close_revoked only looks at connections that already have a peer
# certificate, and sessions.handshake_done does not check the CRL. So a connection that
# is open but still handshaking while ``router reload`` applies the CRL completes its
# handshake with the old context (no CRL) and becomes a session of the revoked endpoint
# (docs/pki.md: "new handshakes of the revoked certificate fail (cert_revoked)").


def test_handshake_in_flight_during_reload_is_checked_against_the_new_crl(
        tmp_path: Path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])
    data_dir = tmp_path / "master"
    key_line = f'key = "{pki.key("master")}"'

    async def main() -> None:
        master = await spec.start("master")
        node = master.node
        try:
            before = inbound_count(node)
            # agent1 opens its TCP connection (accepted by the node) but has not sent
            # its ClientHello yet when the operator reloads with the new CRL.
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.port("master"))
            await wait_until(lambda: inbound_count(node) > before, what="accepted")

            crl = _ca_revoke(data_dir, pki, "agent1")
            text = spec.toml("master").replace(key_line, f'{key_line}\ncrl_file = "{crl}"')
            (tmp_path / "master.toml").write_text(text)
            record = await master.reload("test")
            assert record.result == "ok", record

            # Now the handshake: a new handshake of a revoked certificate.
            try:
                await asyncio.wait_for(writer.start_tls(
                    client_ssl_context(pki, "agent1"), server_hostname="master"), 10)
            except (OSError, ConnectionError) as exc:
                return                                   # refused in the handshake: fine
            peer = FakePeer(reader, writer)
            peer.send("icinga::Hello", {"capabilities": 1, "version": 21306})
            await wait_until(lambda: peer.closed or peer.messages("icinga::Hello")
                             or "agent1" in node.connections, what="verdict")
            await asyncio.sleep(0)
            admitted = "agent1" in node.connections
            await peer.close()
            assert not admitted, ("agent1's certificate is on the CRL the node reloaded, "
                                  "yet its handshake succeeded and it is connected as "
                                  "endpoint agent1")
        finally:
            await master.stop()

    run(main())


# A reload that prepared its TLS contexts before our own certificate was renewed puts
# the old certificate back.
#
# owncert.OwnCertificate.install writes the renewed certificate and sets
# ``node.server_context``/``client_context``. A reload whose ``prepare`` (worker thread)
# read the TLS files just before that applies its contexts afterwards (apply_to_node), so
# the node serves the old, due certificate again, while ``due()`` reads the renewed file
# and never renews again: the node runs into the old certificate's expiry. (Reloader.
# rebuild_tls guards against exactly this for its own rebuilds; the renewal does not.)
# Here the operator reloads to pick up a CRL (``router ca revoke``) while the signer
# renews its own certificate.


def _served_certificate(port: int, ca: Path) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            ctx.wrap_socket(sock) as tls_sock:
        return x509.load_der_x509_certificate(tls_sock.getpeercert(binary_form=True))


def test_reload_does_not_bring_back_the_certificate_renewal_replaced(
        tmp_path: Path, run, monkeypatch) -> None:
    monkeypatch.setattr(enrollment_mod, "TICK", 3600.0)    # we trigger the renewal
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    ca_dir = make_signer(spec, "master")
    ca_cert, ca_key = pkilib.load_ca(ca_dir)
    now = dt.datetime.now(dt.timezone.utc)
    key = pkilib.load_private_key(pki.key("master"))
    due, _ = pkilib.issue_certificate(ca_cert, ca_key, "master", key=key,
                                      not_before=now - dt.timedelta(days=380),
                                      not_after=now + dt.timedelta(days=10))
    pkilib.write_certificate(pki.cert("master"), due)
    extra = "[pki]\nrenew_with_new_key = false"
    key_line = f'key = "{pki.key("master")}"'

    async def main() -> None:
        master = await spec.start("master", extra=extra)
        node = master.node
        loop = asyncio.get_running_loop()
        try:
            assert node.enrollment.own.due() is not None
            orig = reload_mod.prepare

            def prepare_then_renewal_lands(*args, **kwargs):
                prepared = orig(*args, **kwargs)       # read the TLS files (old cert)
                # ... and meanwhile, on the loop, our renewal is installed.
                fut = asyncio.run_coroutine_threadsafe(_renew(), loop)
                fut.result(10)
                return prepared

            async def _renew() -> None:
                node.enrollment.renew_own(set())

            monkeypatch.setattr(reload_mod, "prepare", prepare_then_renewal_lands)
            crl = pkilib.revoke(ca_cert, ca_key, ca_dir / pkilib.CRL_NAME,
                                [pkilib.load_certificates(pki.cert("agent1"))[0]])
            text = spec.toml("master", extra=extra).replace(
                key_line, f'{key_line}\ncrl_file = "{crl}"')
            (tmp_path / "master.toml").write_text(text)
            record = await master.reload("test")
            assert record.result == "ok", record

            on_disk = pkilib.load_certificates(pki.cert("master"))[0]
            assert on_disk.not_valid_after_utc > now + dt.timedelta(days=300), \
                "the renewal did not happen"
            assert node.enrollment.own.due() is None
            served = await asyncio.to_thread(_served_certificate, spec.port("master"),
                                             pki.ca_cert)
            assert served == on_disk, (
                f"node serves the old certificate (notAfter "
                f"{served.not_valid_after_utc:%Y-%m-%d}) after renewal installed one "
                f"valid until {on_disk.not_valid_after_utc:%Y-%m-%d}; due() is None so it "
                "is never renewed again")
        finally:
            await master.stop()

    run(main())


# ``router ca sign`` on a running node is never noticed when another request is stored
# before the next tick.
#
# Enrollment.refresh re-reads the request directory only when its mtime differs from
# ``_store_stamp``. _pending (and _update_certificate) set ``_store_stamp =
# self.store.stamp()`` after their own write ("our own write: no rescan needed"), which
# also swallows any change somebody else made since the last refresh: a request signed
# with ``router ca sign`` in that window is not delivered to its connected requester and
# ``router_csr_pending`` stays too high until some later external change of the directory.
# The tick is made long here and housekeeping is called by hand, so the window is exact;
# with the real one-second tick the same happens whenever a request arrives within the
# second after ``router ca sign`` (a busy signer).


def test_ca_sign_is_noticed_although_a_new_request_came_first(tmp_path, run, monkeypatch):
    monkeypatch.setattr(enrollment_mod, "TICK", 3600.0)    # ticks by hand below
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = master_only(tmp_path, pki)
    key_a = pkilib.generate_key("ec")
    cert_a = pkilib.self_signed_certificate(key_a, "agent-a")
    cert_b = pkilib.self_signed_certificate(pkilib.generate_key("ec"), "agent-b")

    async def main():
        master = await spec.start("master", extra=pki_table(None))
        node = master.node
        try:
            peer_a = await anonymous(spec.port("master"), pki)
            assert (await ask(peer_a, cert_a))["status_code"] == 2
            node.enrollment.housekeeping(time.time())            # a tick: nothing new
            # The operator signs agent-a's request (what `router ca sign` writes) ...
            store = pkilib.RequestStore(spec.directory / "master")
            ca_cert, ca_key = pkilib.load_ca(spec.directory / "master" / "ca")
            fp_a = pkilib.fingerprint(cert_a)
            store.set_response(fp_a, pkilib.certificate_pem(
                pkilib.sign_request(ca_cert, ca_key, cert_a)))
            # ... and before the next tick another node asks (stored as pending).
            peer_b = await anonymous(spec.port("master"), pki)
            assert (await ask(peer_b, cert_b))["status_code"] == 2
            node.enrollment.housekeeping(time.time())            # the next tick
            node.enrollment.housekeeping(time.time())            # and one more
            try:
                await wait_until(lambda: peer_a.messages(UPD), timeout=3, what="delivery")
            except AssertionError:
                pass
            text = await metrics_text(master)
            pending = metric(text, "router_csr_pending")
            delivered = bool(peer_a.messages(UPD))
            await peer_a.close()
            await peer_b.close()
            assert delivered and pending == 1, (
                f"router ca sign not noticed: delivered to agent-a={delivered}, "
                f"router_csr_pending={pending:g} (1 is pending on disk)")
        finally:
            await master.stop()

    run(main())


# ``router pki request --new-key`` keeps the self-signed certificate of the pending new
# key as ``certs/CN.crt.new``: the name ``pki.rekey.staged_cert_path`` gives the staged
# certificate of the node's own key swap. When the node starts (``router serve`` calls
# ``finish_key_rotation`` in RouterService.start) while such a request is pending, that file
# is taken for a staged certificate that is "not needed" and deleted. The next ``router pki
# request --new-key`` then makes a fresh self-signed certificate for the same key (another
# random serial and time, so another fingerprint) and never writes it: the request the
# operator signed with ``router ca sign FP`` is never fetched, and every run stores yet
# another pending request on the signer (docs/pki.md: "run the same command again after
# `router ca sign`").


def _cli(*args: str):
    return asyncio.to_thread(CliRunner().invoke, main, list(args))


def test_pending_new_key_request_survives_a_node_start(tmp_path, run) -> None:
    test_pki = make_test_pki(tmp_path / "pki", ["master", "agent7"])
    spec = ClusterSpec(tmp_path, test_pki, [("master", ["master"], None)])
    ca_dir = tmp_path / "master" / "ca"
    ca_dir.mkdir(parents=True)
    shutil.copy(test_pki.ca_cert, ca_dir / "ca.crt")
    shutil.copy(test_pki.ca_key, ca_dir / "ca.key")
    node = tmp_path / "agent"
    certs = node / "certs"
    certs.mkdir(parents=True)
    # agent7 is enrolled already (a router node: its key, certificate and CA).
    shutil.copy(test_pki.cert("agent7"), certs / "agent7.crt")
    shutil.copy(test_pki.key("agent7"), certs / "agent7.key")
    shutil.copy(test_pki.ca_cert, certs / "ca.crt")
    master_dir = str(tmp_path / "master")

    async def main_():
        master = await spec.start("master")
        try:
            port = str(spec.port("master"))
            pkilib.write_certificate(certs / "trusted-parent.crt", pkilib.load_certificates(
                spec.pki.cert("master"))[0])
            base = ["pki", "request", "--host", "127.0.0.1", "--port", port, "--cn",
                    "agent7", "--data-dir", str(node), "--new-key"]
            waiting = await _cli(*base)
            assert waiting.exit_code == 0 and "pending" in waiting.output, waiting.output
            fp = pkilib.fingerprint(pkilib.load_certificates(certs / "agent7.crt.new")[0])

            # The agent's node is (re)started meanwhile: RouterService.start ->
            # enrollment.finish_key_rotation(config.tls) -> this call.
            pkilib.finish_key_rotation(certs / "agent7.key", certs / "agent7.crt")

            signed = await _cli("ca", "sign", fp, "--data-dir", master_dir)
            assert signed.exit_code == 0, signed.output
            done = await _cli(*base)
            pending_now = pkilib.RequestStore(master_dir).list().requests
            assert done.exit_code == 0 and "with a new key" in done.output, (
                f"the signed request {fp[:16]} was not fetched: {done.output.strip()!r}; "
                f"{sum(not r.signed for r in pending_now)} pending request(s) on the signer")
        finally:
            await master.stop()

    run(main_())


# A reload takes a private key that group and others can read into use.
#
# RouterService.start refuses a ``[tls] key`` (or ``DATA_DIR/ca/ca.key``) open to group or
# others (filemodes.check_key_modes, docs/security.md "File modes"), but reload.prepare
# builds the new TLS contexts without that check. The documented way to put a new key
# into service is a reload (docs/pki.md "CA rollover" step 4: copy NAME.crt and NAME.key
# into certs/, ``router reload``), so a key copied with mode 0644 is used silently, where
# a restart would have refused it.


def test_reload_refuses_a_world_readable_key(tmp_path: Path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    staging = tmp_path / "staging"
    staging.mkdir()
    open_key = staging / "master.key"
    shutil.copy(pki.key("master"), open_key)
    shutil.copy(pki.cert("master"), staging / "master.crt")
    os.chmod(open_key, 0o644)

    async def main() -> None:
        master = await spec.start("master")
        try:
            text = spec.toml("master").replace(
                f'key = "{pki.key("master")}"', f'key = "{open_key}"').replace(
                f'cert = "{pki.cert("master")}"', f'cert = "{staging / "master.crt"}"')
            (tmp_path / "master.toml").write_text(text)
            record = await master.reload("test")
            assert record.result != "ok", (
                f"reload applied [tls] key {open_key} with mode 0644 (a start refuses it): "
                f"{record.changes}")
        finally:
            await master.stop()

    run(main())
