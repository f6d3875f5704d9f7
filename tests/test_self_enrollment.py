"""A node that starts with a ticket and no signed certificate enrolls itself
(``router serve --ticket``, docs/pki.md): real TLS on 127.0.0.1, our master signs, the
node installs the certificate and reconnects without a restart."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from router import pki as pkilib
from router.cli import main as cli_main
from router.node import enrollment
from tests.nodeutil import ClusterSpec, wait_until
from tests.pkiutil import make_test_pki

SALT = "self-enrollment-salt"


def test_node_with_ticket_enrolls_itself_and_reconnects(tmp_path, run, caplog):
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")],
                       dialled={"master"})
    ca_dir = spec.directory / "master" / "ca"
    ca_dir.mkdir(parents=True)
    shutil.copy(pki.ca_cert, ca_dir / "ca.crt")
    shutil.copy(pki.ca_key, ca_dir / "ca.key")
    # what `router serve --ticket T` does before it starts: no key or certificate yet
    tls_cfg = spec.config("agent1", listen=False).tls
    assert enrollment.prepare_self_enrollment(tls_cfg, "agent1",
                                              pkilib.ticket("agent1", SALT))
    ticket = enrollment.ticket_path(tls_cfg)
    assert ticket.read_text().strip() == pkilib.ticket("agent1", SALT)
    assert ticket.stat().st_mode & 0o777 == 0o600
    assert enrollment.is_enrolling(tls_cfg)
    key = pkilib.load_private_key(tls_cfg.key)
    ca = pkilib.load_certificates(pki.ca_cert)[0]

    async def main():
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"')
        agent = await spec.start("agent1", listen=False)
        try:
            await wait_until(lambda: pkilib.signed_by(
                pkilib.load_certificates(tls_cfg.cert)[0], ca), 15,
                what="the agent's certificate signed by the master")
            assert not ticket.exists() and not enrollment.is_enrolling(tls_cfg)
            own = pkilib.load_certificates(tls_cfg.cert)[0]
            assert pkilib.same_public_key(own, key) and pkilib.common_name(own) == "agent1"
            await wait_until(lambda: "agent1" in master.node.connections, 15,
                             what="the agent reconnected as an authenticated endpoint")
            assert "master" in agent.node.connections
            assert not master.node.anonymous
        finally:
            await agent.stop()
            await master.stop()

    run(main(), timeout=60)
    assert "asking our parent zone to sign it" in caplog.text
    assert "installed our new certificate" in caplog.text


def test_serve_with_ticket_needs_the_ca_certificate(tmp_path):
    data = tmp_path / "agent"
    result = CliRunner().invoke(cli_main, [
        "serve", "--node-name", "agent1", "--data-dir", str(data), "--ticket", "00" * 20,
        "--listen", "none", "--status-listen", "none"])
    assert result.exit_code != 0
    assert "ca.crt does not exist" in result.output, result.output
    assert not (data / "certs" / "ca.key").exists()      # no CA of its own either


def test_self_signed_certificate_without_ticket_is_still_refused(tmp_path, run):
    """Without certs/ticket a self-signed certificate stops the node as before."""
    import pytest

    from router.app import RouterService
    from router.errors import TLSSetupError

    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])
    config = spec.config("agent1", listen=False)
    enrollment.prepare_self_enrollment(config.tls, "agent1", "ticket")
    enrollment.ticket_path(config.tls).unlink()
    assert not enrollment.is_enrolling(config.tls)

    async def main():
        service = RouterService(config)
        with pytest.raises(TLSSetupError, match="not signed by the CA"):
            await service.start()

    run(main())
