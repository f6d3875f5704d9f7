"""``router ca ...`` and ``router pki new-cert|save-cert|request|status`` (click CliRunner),
and one run of each network command against a real node on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from router import pki as pkilib
from router.cli import main
from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki

SALT = "cli-salt"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A signer's data directory: ca/ with a CA, no requests yet."""
    directory = tmp_path / "signer"
    pkilib.create_ca(directory / "ca")
    return directory


def pending(data_dir: Path, cn: str = "agent9") -> tuple[str, pkilib.PrivateKey]:
    key = pkilib.generate_key("ec")
    cert = pkilib.self_signed_certificate(key, cn)
    fp = pkilib.fingerprint(cert)
    pkilib.RequestStore(data_dir).save_pending(fp, pkilib.certificate_pem(cert), "")
    return fp, key


# -- router ca ---------------------------------------------------------------------------

def test_ca_list_sign_remove_restore(data_dir: Path) -> None:
    empty = invoke("ca", "list", "--data-dir", str(data_dir))
    assert empty.exit_code == 0 and "no pending certificate requests" in empty.output
    fp, key = pending(data_dir)
    listed = invoke("ca", "list", "--data-dir", str(data_dir))
    assert fp in listed.output and "pending" in listed.output and "CN = agent9" in listed.output

    signed = invoke("ca", "sign", fp, "--data-dir", str(data_dir))
    assert signed.exit_code == 0, signed.output
    assert "signed the certificate request for CN 'agent9'" in signed.output
    request = pkilib.RequestStore(data_dir).get(fp)
    cert = pkilib.parse_request(request.cert_response)
    ca_cert, _ = pkilib.load_ca(data_dir / "ca")
    assert pkilib.signed_by(cert, ca_cert) and pkilib.same_public_key(cert, key)
    assert "already signed" in invoke("ca", "sign", fp, "--data-dir", str(data_dir)).output
    # signed requests show only with --all
    assert fp not in invoke("ca", "list", "--data-dir", str(data_dir)).output
    doc = json.loads(invoke("ca", "list", "--all", "--json", "--data-dir",
                            str(data_dir)).output)
    assert doc[fp]["state"] == "signed" and doc[fp]["common_name"] == "agent9"
    assert doc[fp]["cert_response"] == request.cert_response

    fp2, _ = pending(data_dir, "agent10")
    assert invoke("ca", "remove", fp2, "--data-dir", str(data_dir)).exit_code == 0
    assert (data_dir / "certificate-requests" / f"{fp2}.removed").exists()
    refused = CliRunner().invoke(main, ["ca", "sign", fp2, "--data-dir", str(data_dir)])
    assert refused.exit_code == 1 and "router ca restore" in refused.output
    doc = json.loads(invoke("ca", "list", "--all", "--json", "--data-dir",
                            str(data_dir)).output)
    assert doc[fp2]["state"] == "removed"
    assert invoke("ca", "restore", fp2, "--data-dir", str(data_dir)).exit_code == 0
    assert fp2 in invoke("ca", "list", "--data-dir", str(data_dir)).output


def test_ca_errors_are_one_line(data_dir: Path) -> None:
    for args in (["ca", "sign", "../../etc/passwd"], ["ca", "remove", "AB" * 32],
                 ["ca", "restore", "ab" * 32], ["ca", "sign", "ab" * 32]):
        result = CliRunner().invoke(main, args + ["--data-dir", str(data_dir)])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: ") and "Traceback" not in result.output
    no_ca = data_dir.parent / "satellite"
    fp, _ = pending(no_ca)
    result = CliRunner().invoke(main, ["ca", "sign", fp, "--data-dir", str(no_ca)])
    assert result.exit_code == 1 and "ca.crt" in result.output


def test_ca_list_reports_corrupt_files(data_dir: Path) -> None:
    fp, _ = pending(data_dir)
    (data_dir / "certificate-requests" / ("cd" * 32 + ".json")).write_text("{broken")
    result = CliRunner().invoke(main, ["ca", "list", "--data-dir",
                                                       str(data_dir)])
    assert result.exit_code == 0 and fp in result.stdout
    assert "skipping" in result.stderr and "cd" * 32 in result.stderr


# -- router pki new-cert / status --------------------------------------------------------

def test_new_cert_and_status(tmp_path: Path) -> None:
    node = tmp_path / "node"
    made = invoke("pki", "new-cert", "--cn", "n1", "--key-type", "rsa", "--bits", "3072",
                  "--data-dir", str(node))
    assert made.exit_code == 0, made.output
    key_path, cert_path = node / "certs" / "n1.key", node / "certs" / "n1.crt"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert pkilib.load_private_key(key_path).key_size == 3072
    cert = pkilib.load_certificates(cert_path)[0]
    assert pkilib.common_name(cert) == "n1"
    again = CliRunner().invoke(main, ["pki", "new-cert", "--cn", "n1", "--data-dir",
                                      str(node)])
    assert again.exit_code == 1 and "not overwriting" in again.output
    for key_type, bits, text in (("rsa", "1024", "at least 2048"),
                                 ("ec", "1000", "256, 384 or 521")):
        bad = CliRunner().invoke(main, ["pki", "new-cert", "--cn", "x", "--key-type",
                                        key_type, "--bits", bits,
                                        "--key", str(tmp_path / "x.key"),
                                        "--cert", str(tmp_path / "x.crt")])
        assert bad.exit_code == 2 and text in bad.output
        assert not (tmp_path / "x.key").exists()
    status = invoke("pki", "status", "--data-dir", str(node))
    assert "self-signed: not enrolled yet" in status.output
    assert "signer: no" in status.output and "0 pending" in status.output


# -- against a running node --------------------------------------------------------------

@pytest.fixture
def signer_spec(tmp_path) -> ClusterSpec:
    test_pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, test_pki, [("master", ["master"], None)])
    ca_dir = tmp_path / "master" / "ca"
    ca_dir.mkdir(parents=True)
    shutil.copy(test_pki.ca_cert, ca_dir / "ca.crt")
    shutil.copy(test_pki.ca_key, ca_dir / "ca.key")
    return spec


def _cli(*args: str):
    return asyncio.to_thread(CliRunner().invoke, main, list(args))


def test_save_cert_and_request_with_ticket(signer_spec: ClusterSpec, tmp_path, run) -> None:
    spec = signer_spec
    node = tmp_path / "agent"

    async def main_():
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"')
        try:
            port = str(spec.port("master"))
            trusted = node / "certs" / "trusted-parent.crt"
            saved = await _cli("pki", "save-cert", "--host", "127.0.0.1", "--port", port,
                               "--out", str(trusted))
            assert saved.exit_code == 0, saved.output
            assert pkilib.load_certificates(trusted)[0] == \
                pkilib.load_certificates(spec.pki.cert("master"))[0]
            ticket = pkilib.ticket("agent7", SALT)
            got = await _cli("pki", "request", "--host", "127.0.0.1", "--port", port,
                             "--cn", "agent7", "--data-dir", str(node), "--ticket", ticket)
            assert got.exit_code == 0, got.output
            cert = pkilib.load_certificates(node / "certs" / "agent7.crt")[0]
            ca = pkilib.load_certificates(node / "certs" / "ca.crt")[0]
            assert pkilib.signed_by(cert, ca) and pkilib.common_name(cert) == "agent7"
            assert pkilib.same_public_key(
                cert, pkilib.load_private_key(node / "certs" / "agent7.key"))
            status = await _cli("pki", "status", "--data-dir", str(node), "--cn", "agent7")
            assert "signed by the CA" in status.output
            # a wrong ticket: one-line error, our certificate untouched
            wrong = await _cli("pki", "request", "--host", "127.0.0.1", "--port", port,
                               "--cn", "agent8", "--data-dir", str(node), "--ticket", "x")
            assert wrong.exit_code == 1 and "Invalid ticket for CN 'agent8'" in wrong.output
        finally:
            await master.stop()

    run(main_())


def test_request_pending_then_ca_sign_then_request(signer_spec: ClusterSpec, tmp_path,
                                                   run) -> None:
    spec = signer_spec
    node = tmp_path / "agent"
    master_dir = str(tmp_path / "master")

    async def main_():
        master = await spec.start("master")
        try:
            port = str(spec.port("master"))
            trusted = node / "certs" / "trusted-parent.crt"
            trusted.parent.mkdir(parents=True)
            pkilib.write_certificate(trusted, pkilib.load_certificates(
                spec.pki.cert("master"))[0])
            args = ["pki", "request", "--host", "127.0.0.1", "--port", port, "--cn",
                    "agent7", "--data-dir", str(node)]
            first = await _cli(*args)
            assert first.exit_code == 0 and "pending" in first.output, first.output
            self_signed = pkilib.load_certificates(node / "certs" / "agent7.crt")[0]
            fp = pkilib.fingerprint(self_signed)
            listed = await _cli("ca", "list", "--data-dir", master_dir)
            assert fp in listed.output
            signed = await _cli("ca", "sign", fp, "--data-dir", master_dir)
            assert signed.exit_code == 0, signed.output
            second = await _cli(*args)
            assert second.exit_code == 0 and "installed" in second.output, second.output
            cert = pkilib.load_certificates(node / "certs" / "agent7.crt")[0]
            assert cert != self_signed and pkilib.same_public_key(cert, self_signed)
        finally:
            await master.stop()

    run(main_())


def test_request_refuses_an_untrusted_parent(signer_spec: ClusterSpec, tmp_path, run) -> None:
    spec = signer_spec
    node = tmp_path / "agent"
    other = pkilib.self_signed_certificate(pkilib.generate_key("ec"), "impostor")
    (node / "certs").mkdir(parents=True)
    pkilib.write_certificate(node / "certs" / "trusted-parent.crt", other)

    async def main_():
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"')
        try:
            got = await _cli("pki", "request", "--host", "127.0.0.1", "--port",
                             str(spec.port("master")), "--cn", "agent7", "--data-dir",
                             str(node), "--ticket", pkilib.ticket("agent7", SALT))
            assert got.exit_code == 1 and "other than the saved one" in got.output
            assert not (node / "certs" / "ca.crt").exists()
            assert master.node.enrollment.requests.total() == 0
        finally:
            await master.stop()

    run(main_())


def test_ca_sign_reaches_a_connected_requester(signer_spec: ClusterSpec, tmp_path,
                                               run) -> None:
    spec = signer_spec
    key = pkilib.generate_key("ec")
    cert = pkilib.self_signed_certificate(key, "waiting")

    async def main_():
        master = await spec.start("master")
        try:
            peer = await FakePeer.connect(spec.port("master"), spec.pki, None,
                                          server_name="master")
            peer.send("pki::RequestCertificate",
                      {"cert_request": pkilib.certificate_pem(cert), "ticket": ""})
            fp = pkilib.fingerprint(cert)
            store = pkilib.RequestStore(tmp_path / "master")
            await wait_until(lambda: store.get(fp) is not None, what="stored")
            signed = await _cli("ca", "sign", fp, "--data-dir", str(tmp_path / "master"))
            assert signed.exit_code == 0, signed.output
            await wait_until(lambda: peer.messages("pki::UpdateCertificate"), timeout=5,
                             what="delivery without restart")
            params = peer.messages("pki::UpdateCertificate")[0]["params"]
            assert pkilib.same_public_key(pkilib.parse_request(params["cert"]), key)
            await peer.close()
        finally:
            await master.stop()

    run(main_())


def test_ca_revoke(data_dir: Path, tmp_path: Path) -> None:
    fp, _ = pending(data_dir)
    unsigned = CliRunner().invoke(main, ["ca", "revoke", fp, "--data-dir", str(data_dir)])
    assert unsigned.exit_code == 1 and "no signed certificate" in unsigned.output
    invoke("ca", "sign", fp, "--data-dir", str(data_dir))
    revoked = invoke("ca", "revoke", fp, "--data-dir", str(data_dir))
    assert revoked.exit_code == 0 and "revoked the certificate for CN 'agent9'" in \
        revoked.output
    ca_cert, _ = pkilib.load_ca(data_dir / "ca")
    crl = pkilib.load_crl(data_dir / "ca" / "ca.crl", ca_cert)
    cert = pkilib.parse_request(pkilib.RequestStore(data_dir).get(fp).cert_response)
    assert pkilib.is_revoked(crl, cert)
    # a certificate of another CA is refused with one line, the CRL is unchanged
    foreign = tmp_path / "foreign.crt"
    pkilib.write_certificate(foreign, pkilib.self_signed_certificate(
        pkilib.generate_key("ec"), "foreign"))
    other = CliRunner().invoke(main, ["ca", "revoke", "--cert", str(foreign), "--data-dir",
                                      str(data_dir)])
    assert other.exit_code == 1 and "not issued by this CA" in other.output
    assert len(pkilib.load_crl(data_dir / "ca" / "ca.crl", ca_cert)) == 1
    both = CliRunner().invoke(main, ["ca", "revoke", "--data-dir", str(data_dir)])
    assert both.exit_code == 2


def test_request_with_a_new_key(signer_spec: ClusterSpec, tmp_path, run) -> None:
    """Key rotation (users.md P15): the new key waits as CN.key.new until it is signed."""
    spec = signer_spec
    node = tmp_path / "agent"
    certs = node / "certs"
    master_dir = str(tmp_path / "master")

    async def main_():
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"')
        try:
            port = str(spec.port("master"))
            certs.mkdir(parents=True)
            pkilib.write_certificate(certs / "trusted-parent.crt", pkilib.load_certificates(
                spec.pki.cert("master"))[0])
            base = ["pki", "request", "--host", "127.0.0.1", "--port", port, "--cn",
                    "agent7", "--data-dir", str(node)]
            ticket = ["--ticket", pkilib.ticket("agent7", SALT)]
            assert (await _cli(*base, *ticket)).exit_code == 0
            first_key = pkilib.load_private_key(certs / "agent7.key")

            rotated = await _cli(*base, *ticket, "--new-key", "--key-type", "rsa")
            assert rotated.exit_code == 0 and "with a new key" in rotated.output, \
                rotated.output
            second_key = pkilib.load_private_key(certs / "agent7.key")
            cert = pkilib.load_certificates(certs / "agent7.crt")[0]
            assert pkilib.same_public_key(cert, second_key)
            assert not pkilib.same_public_key(cert, first_key)
            assert stat.S_IMODE((certs / "agent7.key").stat().st_mode) == 0o600
            assert not (certs / "agent7.key.new").exists()

            # without a ticket: pending; the old key and certificate stay in use
            waiting = await _cli(*base, "--new-key")
            assert waiting.exit_code == 0 and "pending" in waiting.output
            assert (certs / "agent7.key.new").exists()
            assert pkilib.same_public_key(pkilib.load_certificates(certs / "agent7.crt")[0],
                                          pkilib.load_private_key(certs / "agent7.key"))
            fp = pkilib.fingerprint(pkilib.load_certificates(certs / "agent7.crt.new")[0])
            assert (await _cli("ca", "sign", fp, "--data-dir", master_dir)).exit_code == 0
            done = await _cli(*base, "--new-key")
            assert done.exit_code == 0 and "with a new key" in done.output, done.output
            third = pkilib.load_private_key(certs / "agent7.key")
            assert not pkilib.same_public_key(cert, third)
            assert pkilib.same_public_key(pkilib.load_certificates(certs / "agent7.crt")[0],
                                          third)
        finally:
            await master.stop()

    run(main_())


def test_request_keeps_our_ca_when_the_parent_sends_another(signer_spec: ClusterSpec,
                                                           tmp_path, run) -> None:
    spec = signer_spec
    node = tmp_path / "agent"
    certs = node / "certs"
    certs.mkdir(parents=True)
    pkilib.write_certificate(certs / "trusted-parent.crt",
                             pkilib.load_certificates(spec.pki.cert("master"))[0])
    pkilib.create_ca(tmp_path / "mine")
    mine = pkilib.load_ca(tmp_path / "mine")[0]
    pkilib.write_certificate(certs / "ca.crt", mine)

    async def main_():
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"')
        try:
            got = await _cli("pki", "request", "--host", "127.0.0.1", "--port",
                             str(spec.port("master")), "--cn", "agent7", "--data-dir",
                             str(node), "--ticket", pkilib.ticket("agent7", SALT))
            assert got.exit_code == 1 and "keeping ours" in got.output
            assert "not signed by the CA" in got.output
            assert pkilib.load_certificates(certs / "ca.crt")[0] == mine
        finally:
            await master.stop()

    run(main_())


def test_pki_request_checks_the_answer_against_every_ca_of_the_bundle(tmp_path: Path) -> None:
    """During a CA rollover certs/ca.crt holds two CAs, in either order: an answer signed
    by the second one is accepted, a foreign CA's is not (was: only the first CA)."""
    from router.cli.pki import _keep_ca

    for name in ("old", "new", "foreign"):
        pkilib.create_ca(tmp_path / name)
    old_cert, _ = pkilib.load_ca(tmp_path / "old")
    new_cert, new_key = pkilib.load_ca(tmp_path / "new")
    foreign_cert, foreign_key = pkilib.load_ca(tmp_path / "foreign")
    bundle = tmp_path / "ca.crt"
    bundle.write_bytes((tmp_path / "old" / "ca.crt").read_bytes()
                       + (tmp_path / "new" / "ca.crt").read_bytes())
    cas = _keep_ca(bundle, None)
    assert len(cas) == 2
    leaf, _ = pkilib.issue_certificate(new_cert, new_key, "agent1")
    assert any(pkilib.signed_by(leaf, ca) for ca in cas)
    stray, _ = pkilib.issue_certificate(foreign_cert, foreign_key, "agent1")
    assert not any(pkilib.signed_by(stray, ca) for ca in cas)
    assert old_cert in cas
