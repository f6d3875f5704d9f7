"""Certificate enrollment between the router and real Icinga 2.13.6 (docs/pki.md).

1. the real ``icinga2 pki save-cert`` + ``icinga2 pki request --ticket`` against our master
   get a certificate our CA signed, and a real agent using it connects as an
   authenticated endpoint;
2. the same without a ticket: pending, ``router ca sign``, delivered on the next
   ``icinga2 pki request``;
3. through our satellite (no CA key): pending there, signed by our master, delivered on a
   later request;
4. our node enrolls with ``router pki request`` against a real Icinga master (RSA CA);
5. our satellite renews its expiring certificate with a real Icinga master: re-signed
   after its new-key request stays pending, or for a new key with a ticket; our agent
   renews with a new key through a real Icinga satellite under our master;
6. a real agent set up with ``icinga2 node setup --ticket`` (confined to its own directory)
   enrolls by itself on its first start against our master, and
7. the same through our satellite;
8. our node started with a ticket and a self-signed certificate (``router serve
   --ticket``) enrolls itself with a real Icinga master and reconnects authenticated.

Everything on 127.0.0.1; the Icinga CLI runs with the harness's environment.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cryptography import x509

from perf.icinga import IcingaFactory, IcingaNode, free_port
from router import pki
from router.cli import main

from .routerutil import RouterNode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

SALT = "interop-ticket-salt"

CONNECT_TIMEOUT = 25


def icinga_pki(binary: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``icinga2 pki ...`` (it needs no daemon, only the paths given)."""
    import grp
    import os
    import pwd

    env = dict(os.environ)
    env["ICINGA2_USER"] = pwd.getpwuid(os.getuid()).pw_name
    env["ICINGA2_GROUP"] = grp.getgrgid(os.getgid()).gr_name
    return subprocess.run([binary, "pki", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def make_signer(router: RouterNode, factory: IcingaFactory) -> None:
    """Our node becomes the signing master: DATA_DIR/ca holds the factory's CA."""
    ca_dir = router.data_dir / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(factory.ca_crt, ca_dir / "ca.crt")
    shutil.copy(factory.ca_key, ca_dir / "ca.key")


def our_master(tmp_path: Path, factory: IcingaFactory, *, salt: str | None,
               children: list[str] = ()) -> RouterNode:
    cert, key = factory.issue("master")
    zones = [{"name": "master", "endpoints": ["master"]}]
    zones += [{"name": c, "endpoints": [c], "parent": "master"} for c in children]
    extra = "" if salt is None else f'\n[pki]\nticket_salt = "{salt}"'
    router = RouterNode(tmp_path / "router-master", "master", zones=zones,
                        endpoints=[{"name": "master"}] + [{"name": c} for c in children],
                        cert=cert, key=key, ca=factory.ca_crt,
                        node_toml=extra)
    make_signer(router, factory)
    return router


def rsa_icinga_ca(icinga: IcingaNode) -> tuple[x509.Certificate, pki.PrivateKey]:
    """Make ``icinga`` a signing master with an RSA CA of its own (DataDir/ca, as
    ``icinga2 pki new-ca`` leaves it) and a certificate from it."""
    pki.create_ca(icinga.data_dir / "ca", common_name="Icinga CA", key_type="rsa")
    ca_cert, ca_key = pki.load_ca(icinga.data_dir / "ca")
    cert, key = pki.issue_certificate(ca_cert, ca_key, icinga.name, key_type="rsa")
    pki.write_certificate(icinga.certs_dir / "ca.crt", ca_cert)
    pki.write_certificate(icinga.certs_dir / f"{icinga.name}.crt", cert)
    pki.write_private_key(icinga.certs_dir / f"{icinga.name}.key", key)
    return ca_cert, ca_key


class IcingaEnrollee:
    """A node that enrolls with the real Icinga CLI (key, self-signed cert, TOFU)."""

    def __init__(self, binary: str, directory: Path, cn: str) -> None:
        self.binary = binary
        self.cn = cn
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / f"{cn}.key"
        self.cert = self.dir / f"{cn}.crt"
        self.trusted = self.dir / "trusted-parent.crt"
        self.ca = self.dir / "ca.crt"
        out = icinga_pki(binary, "new-cert", "--cn", cn, "--key", str(self.key),
                         "--cert", str(self.cert))
        assert out.returncode == 0, out.stdout + out.stderr

    def save_cert(self, port: int) -> None:
        out = icinga_pki(self.binary, "save-cert", "--host", "127.0.0.1", "--port",
                         str(port), "--trustedcert", str(self.trusted))
        assert out.returncode == 0, out.stdout + out.stderr

    def request(self, port: int, ticket: str = "") -> subprocess.CompletedProcess[str]:
        args = ["request", "--host", "127.0.0.1", "--port", str(port), "--key",
                str(self.key), "--cert", str(self.cert), "--trustedcert", str(self.trusted),
                "--ca", str(self.ca)]
        if ticket:
            args += ["--ticket", ticket]
        return icinga_pki(self.binary, *args)

    def signed_by(self, ca_crt: Path) -> bool:
        cert = pki.load_certificates(self.cert)[0]
        return pki.signed_by(cert, pki.load_certificates(ca_crt)[0])


def test_icinga_pki_request_with_ticket_then_agent_connects(
        tmp_path: Path, icinga_factory: IcingaFactory, icinga2_bin: str) -> None:
    router = our_master(tmp_path, icinga_factory, salt=SALT, children=["agent1"])
    router.start()
    try:
        enrollee = IcingaEnrollee(icinga2_bin, tmp_path / "enroll", "agent1")
        enrollee.save_cert(router.listen_port)
        assert pki.load_certificates(enrollee.trusted)[0] == \
            pki.load_certificates(router.cert)[0]
        out = enrollee.request(router.listen_port, pki.ticket("agent1", SALT))
        assert out.returncode == 0, out.stdout + out.stderr + router.log_tail()
        assert enrollee.signed_by(icinga_factory.ca_crt)
        assert router.metric("router_csr_requests_total", result="signed") == 1

        agent = icinga_factory("agent1", "agent1",
                               endpoints=[{"name": "master", "host": "127.0.0.1",
                                           "port": router.listen_port}, {"name": "agent1"}],
                               zones=[{"name": "master", "endpoints": ["master"]},
                                      {"name": "agent1", "endpoints": ["agent1"],
                                       "parent": "master"}])
        agent.install_certs(enrollee.ca, enrollee.cert, enrollee.key)
        agent.start()
        router.wait_for(lambda: router.endpoint_status("agent1")["connected"],
                        CONNECT_TIMEOUT, what="the enrolled agent as an authenticated endpoint",
                        extra=lambda: agent.diagnostics(40))
    finally:
        router.stop()


def test_icinga_pki_request_without_ticket_then_ca_sign(
        tmp_path: Path, icinga_factory: IcingaFactory, icinga2_bin: str) -> None:
    router = our_master(tmp_path, icinga_factory, salt=None)
    router.start()
    try:
        enrollee = IcingaEnrollee(icinga2_bin, tmp_path / "enroll", "agent2")
        enrollee.save_cert(router.listen_port)
        first = enrollee.request(router.listen_port)
        assert first.returncode == 0, first.stdout + first.stderr + router.log_tail()
        assert "pending" in (first.stdout + first.stderr)
        fp = pki.fingerprint(pki.load_certificates(enrollee.cert)[0])
        listed = CliRunner().invoke(main, ["ca", "list", "--data-dir", str(router.data_dir)])
        assert fp in listed.output
        signed = CliRunner().invoke(main, ["ca", "sign", fp, "--data-dir",
                                           str(router.data_dir)])
        assert signed.exit_code == 0, signed.output
        second = enrollee.request(router.listen_port)
        assert second.returncode == 0, second.stdout + second.stderr + router.log_tail()
        assert enrollee.signed_by(icinga_factory.ca_crt)
    finally:
        router.stop()


def test_icinga_pki_request_through_our_satellite(
        tmp_path: Path, icinga_factory: IcingaFactory, icinga2_bin: str) -> None:
    master = our_master(tmp_path, icinga_factory, salt=None, children=["sat"])
    master.start()
    sat_cert, sat_key = icinga_factory.issue("sat")
    zones = [{"name": "master", "endpoints": ["master"]},
             {"name": "sat", "endpoints": ["sat"], "parent": "master"}]
    sat = RouterNode(tmp_path / "router-sat", "sat", zones=zones,
                     endpoints=[{"name": "master", "port": master.listen_port},
                                {"name": "sat"}],
                     cert=sat_cert, key=sat_key, ca=icinga_factory.ca_crt)
    sat.start()
    try:
        sat.wait_for(lambda: sat.endpoint_status("master")["connected"], CONNECT_TIMEOUT,
                     what="satellite connected to the master")
        enrollee = IcingaEnrollee(icinga2_bin, tmp_path / "enroll", "agent3")
        enrollee.save_cert(sat.listen_port)
        first = enrollee.request(sat.listen_port)
        assert first.returncode == 0 and "pending" in (first.stdout + first.stderr), \
            first.stdout + first.stderr + sat.log_tail()
        fp = pki.fingerprint(pki.load_certificates(enrollee.cert)[0])
        master.wait_for(lambda: pki.RequestStore(master.data_dir).get(fp) is not None, 10,
                        what="the request forwarded to the master", extra=sat.log_tail)
        signed = CliRunner().invoke(main, ["ca", "sign", fp, "--data-dir",
                                           str(master.data_dir)])
        assert signed.exit_code == 0, signed.output
        # the master's node picks it up and sends it to the satellite (which forwarded it)
        sat.wait_for(lambda: pki.RequestStore(sat.data_dir).get(fp).signed, 10,
                     what="the signed certificate stored on the satellite",
                     extra=master.log_tail)
        second = enrollee.request(sat.listen_port)
        assert second.returncode == 0, second.stdout + second.stderr + sat.log_tail()
        assert enrollee.signed_by(icinga_factory.ca_crt)
    finally:
        sat.stop()
        master.stop()


def test_router_pki_request_against_a_real_icinga_master(
        tmp_path: Path, icinga_factory: IcingaFactory) -> None:
    """Icinga master with an RSA CA of its own in DataDir/ca and a TicketSalt."""
    icinga = icinga_factory("imaster", "imaster")
    ca_cert, _ = rsa_icinga_ca(icinga)
    icinga.start()
    node = tmp_path / "ournode"
    trusted = node / "certs" / "trusted-parent.crt"
    saved = CliRunner().invoke(main, ["pki", "save-cert", "--host", "127.0.0.1", "--port",
                                      str(icinga.api_port), "--out", str(trusted)])
    assert saved.exit_code == 0, saved.output
    got = CliRunner().invoke(main, [
        "pki", "request", "--host", "127.0.0.1", "--port", str(icinga.api_port),
        "--cn", "ours", "--data-dir", str(node),
        "--ticket", pki.ticket("ours", icinga.ticket_salt)])
    assert got.exit_code == 0, got.output + icinga.diagnostics(40)
    ours = pki.load_certificates(node / "certs" / "ours.crt")[0]
    assert pki.signed_by(ours, ca_cert) and pki.common_name(ours) == "ours"
    assert pki.load_certificates(node / "certs" / "ca.crt")[0] == ca_cert
    # and without a ticket: Icinga's pending answer
    other = CliRunner().invoke(main, [
        "pki", "request", "--host", "127.0.0.1", "--port", str(icinga.api_port),
        "--cn", "ours2", "--data-dir", str(node)])
    assert other.exit_code == 0 and "pending" in other.output, other.output


def _satellite_with_expiring_certificate(tmp_path: Path, icinga_factory: IcingaFactory
                                         ) -> tuple[IcingaNode, RouterNode, Path, x509.Certificate,
                                                    pki.PrivateKey]:
    """A real Icinga master (RSA CA, its TicketSalt) and our satellite, whose certificate
    has 10 days left."""
    import datetime as dt

    zones = [{"name": "imaster", "endpoints": ["imaster"]},
             {"name": "sat", "endpoints": ["sat"], "parent": "imaster"}]
    icinga = icinga_factory("imaster", "imaster", zones=zones,
                            endpoints=[{"name": "imaster"}, {"name": "sat"}])
    # Icinga 2.13 signs only with an RSA CA key ("expecting an rsa key").
    ca_cert, ca_key = rsa_icinga_ca(icinga)
    own = tmp_path / "sat-certs"
    own.mkdir()
    now = dt.datetime.now(dt.timezone.utc)
    cert, key = pki.issue_certificate(ca_cert, ca_key, "sat",
                                      not_before=now - dt.timedelta(days=380),
                                      not_after=now + dt.timedelta(days=10))
    pki.write_certificate(own / "sat.crt", cert)
    pki.write_private_key(own / "sat.key", key)
    pki.write_certificate(own / "ca.crt", ca_cert)
    sat = RouterNode(tmp_path / "router-sat", "sat", zones=zones,
                     endpoints=[{"name": "imaster", "port": icinga.api_port},
                                {"name": "sat"}],
                     cert=own / "sat.crt", key=own / "sat.key", ca=own / "ca.crt")
    return icinga, sat, own, ca_cert, key


def _renewed(own: Path) -> bool:
    import datetime as dt

    new = pki.load_certificates(own / "sat.crt")[0]
    return (new.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days > 300


def test_our_satellite_renews_its_certificate_with_a_real_icinga_master(
        tmp_path: Path, icinga_factory: IcingaFactory) -> None:
    """Our satellite's certificate has 10 days left: on connecting it asks the real
    master for a certificate for a new key. Icinga cannot check our proof of the old key
    and keeps that request pending; NEW_KEY_PATIENCE later we ask it to re-sign the
    current key (no ticket: the CA already trusts that key), it sends
    pki::UpdateCertificate and we install it."""
    from router.node.owncert import NEW_KEY_PATIENCE

    icinga, sat, own, ca_cert, key = _satellite_with_expiring_certificate(
        tmp_path, icinga_factory)
    icinga.start()
    sat.start()
    try:
        sat.wait_for(lambda: _renewed(own), CONNECT_TIMEOUT + NEW_KEY_PATIENCE,
                     what="our renewed certificate", extra=lambda: icinga.diagnostics(40))
        new = pki.load_certificates(own / "sat.crt")[0]
        assert pki.same_public_key(new, key) and pki.signed_by(new, ca_cert)
        assert (own / "sat.key.new").exists()       # kept for the next renewal
        log = "\n".join(sat.log_lines())
        assert "asked imaster for our new key" in log
        assert "re-sign our current key" in log
    finally:
        sat.stop()


def test_our_satellite_renews_with_a_new_key_and_a_ticket_at_a_real_icinga_master(
        tmp_path: Path, icinga_factory: IcingaFactory) -> None:
    """With its ticket kept in certs/ticket, a real Icinga master signs our new key (the
    request is an ordinary cert_request to Icinga; our proof's extensions are ignored),
    and we install the new pair without dropping the session."""
    icinga, sat, own, ca_cert, key = _satellite_with_expiring_certificate(
        tmp_path, icinga_factory)
    (own / "ticket").write_text(pki.ticket("sat", icinga.ticket_salt) + "\n")
    (own / "ticket").chmod(0o600)
    icinga.start()
    sat.start()
    try:
        sat.wait_for(lambda: _renewed(own), CONNECT_TIMEOUT, what="our renewed certificate",
                     extra=lambda: icinga.diagnostics(40))
        new = pki.load_certificates(own / "sat.crt")[0]
        assert pki.signed_by(new, ca_cert)
        assert not pki.same_public_key(new, key)
        assert pki.same_public_key(new, pki.load_private_key(own / "sat.key"))
        assert not (own / "sat.key.new").exists()
        log = "\n".join(sat.log_lines())
        assert "installed our new certificate and key" in log
        assert "re-sign our current key" not in log
        # the session to the master stayed up through the swap
        assert "disconnected" not in log
        sat.wait_for(lambda: sat.endpoint_status("imaster").get("connected"), 10,
                     what="imaster still connected")
    finally:
        sat.stop()


def test_our_agent_renews_with_a_new_key_through_a_real_icinga_satellite(
        tmp_path: Path, icinga_factory: IcingaFactory) -> None:
    """Our agent (10 days left) under a real Icinga 2.13 satellite under our signing
    master: Icinga stores and forwards our new-key request like any other, our master
    checks the proof inside it and signs, Icinga keeps the answer and hands it out when
    we ask again; we install the new pair without dropping the session."""
    import datetime as dt

    from router.node.owncert import NEW_KEY_PATIENCE

    zones = [{"name": "master", "endpoints": ["master"]},
             {"name": "isat", "endpoints": ["isat"], "parent": "master"},
             {"name": "agent1", "endpoints": ["agent1"], "parent": "isat"}]
    master = our_master(tmp_path, icinga_factory, salt=None, children=["isat"])
    master.start()
    isat = icinga_factory("isat", "isat", zones=zones,
                          endpoints=[{"name": "master", "host": "127.0.0.1",
                                      "port": master.listen_port},
                                     {"name": "isat"}, {"name": "agent1"}])
    isat.start()
    ca_cert, ca_key = pki.load_ca(icinga_factory.ca_dir)
    own = tmp_path / "agent-certs"
    own.mkdir()
    now = dt.datetime.now(dt.timezone.utc)
    cert, key = pki.issue_certificate(ca_cert, ca_key, "agent1",
                                      not_before=now - dt.timedelta(days=380),
                                      not_after=now + dt.timedelta(days=10))
    pki.write_certificate(own / "agent1.crt", cert)
    pki.write_private_key(own / "agent1.key", key)
    pki.write_certificate(own / "ca.crt", ca_cert)
    agent = RouterNode(tmp_path / "router-agent", "agent1", zones=zones,
                       endpoints=[{"name": "isat", "port": isat.api_port},
                                  {"name": "master"}, {"name": "agent1"}],
                       cert=own / "agent1.crt", key=own / "agent1.key", ca=own / "ca.crt")
    agent.start()
    try:
        def renewed() -> bool:
            new = pki.load_certificates(own / "agent1.crt")[0]
            return (new.not_valid_after_utc - now).days > 300
        agent.wait_for(renewed, CONNECT_TIMEOUT + 2 * NEW_KEY_PATIENCE,
                       what="our renewed certificate",
                       extra=lambda: isat.diagnostics(40) + master.log_tail())
        new = pki.load_certificates(own / "agent1.crt")[0]
        assert pki.signed_by(new, ca_cert)
        assert not pki.same_public_key(new, key)
        assert pki.same_public_key(new, pki.load_private_key(own / "agent1.key"))
        assert "(renewal with a new key)" in "\n".join(master.log_lines())
        log = "\n".join(agent.log_lines())
        assert "installed our new certificate and key" in log
        assert "disconnected" not in log
    finally:
        agent.stop()
        master.stop()


class NodeSetupAgent(IcingaNode):
    """A real Icinga agent configured by ``icinga2 node setup --ticket ...`` itself.

    ``node setup`` writes under the paths given as ``-DConfiguration.*`` constants (the
    same ones :class:`IcingaNode` passes to the daemon), so a minimal ConfigDir skeleton in
    the node's own directory keeps it away from /etc/icinga2 and /var/lib/icinga2. It
    writes constants.conf, zones.conf, features-available/api.conf, a new key with a
    self-signed certificate and ``certs/ticket``; the daemon then asks its parent for a
    certificate on its first connection. Like every agent set up without
    ``--parent_host``, the CA certificate is copied in by hand ("Please copy the public CA
    certificate from your master/satellite").
    """

    def __init__(self, factory: IcingaFactory, name: str, *, parent_zone: str,
                 parent: str, parent_port: int, trusted: Path, ticket: str,
                 ca_crt: Path) -> None:
        super().__init__(factory.base_dir, name, name, api_port=free_port(), endpoints=[],
                         zones=[], binary=factory.binary)
        (self.config_dir / "features-available").mkdir(exist_ok=True)
        (self.config_dir / "features-enabled").mkdir(exist_ok=True)
        for empty in ("constants.conf", "zones.conf"):
            (self.config_dir / empty).touch()
        self.config_path.write_text(
            'include "constants.conf"\ninclude "zones.conf"\ninclude <itl>\n'
            'include "features-enabled/*.conf"\n')
        out = subprocess.run(
            [self.binary, "node", "setup", *self._defines(),
             "--ticket", ticket, "--cn", name, "--zone", name,
             "--endpoint", f"{parent},127.0.0.1,{parent_port}",
             "--parent_zone", parent_zone, "--trustedcert", str(trusted),
             "--listen", f"127.0.0.1,{self.api_port}",
             "--accept-config", "--accept-commands", "--disable-confd"],
            capture_output=True, text=True, timeout=60, env=self._env(), check=False)
        self.setup_output = out.stdout + out.stderr
        assert out.returncode == 0, self.setup_output
        api = self.config_dir / "features-enabled" / "api.conf"
        if not api.exists():  # 2.13.6 enables the feature before writing api.conf
            api.symlink_to("../features-available/api.conf")
        with self.config_path.open("a") as conf:
            conf.write(f'object FileLogger "debug-file" {{\n  path = "{self.log_path}"\n'
                       '  severity = "debug"\n}\n')
        shutil.copyfile(ca_crt, self.ca_path)
        factory.nodes.append(self)  # stopped (and its log attached) by the fixture

    def write_config(self) -> None:
        """The configuration is node setup's, not ours."""

    def _defines(self) -> list[str]:
        return [arg for arg in self._command() if arg.startswith("-DConfiguration.")]

    def own_cert(self) -> x509.Certificate:
        return pki.load_certificates(self.certs_dir / f"{self.name}.crt")[0]


def _node_setup_agent(tmp_path: Path, factory: IcingaFactory, binary: str, *,
                      parent: str, port: int) -> NodeSetupAgent:
    trusted = tmp_path / f"trusted-{parent}.crt"
    out = icinga_pki(binary, "save-cert", "--host", "127.0.0.1", "--port", str(port),
                     "--trustedcert", str(trusted))
    assert out.returncode == 0, out.stdout + out.stderr
    agent = NodeSetupAgent(factory, "agent1", parent_zone=parent, parent=parent,
                           parent_port=port, trusted=trusted,
                           ticket=pki.ticket("agent1", SALT), ca_crt=factory.ca_crt)
    assert (agent.certs_dir / "ticket").exists()
    assert not pki.signed_by(agent.own_cert(), pki.load_certificates(factory.ca_crt)[0])
    return agent


def test_icinga_node_setup_with_ticket_against_our_master(
        tmp_path: Path, icinga_factory: IcingaFactory, icinga2_bin: str) -> None:
    """``icinga2 node setup --ticket``, then the agent daemon's own request on first
    start: our master signs it, the agent installs it and reconnects authenticated."""
    router = our_master(tmp_path, icinga_factory, salt=SALT, children=["agent1"])
    router.start()
    try:
        agent = _node_setup_agent(tmp_path, icinga_factory, icinga2_bin, parent="master",
                                  port=router.listen_port)
        agent.spawn()
        ca = pki.load_certificates(icinga_factory.ca_crt)[0]
        router.wait_for(lambda: pki.signed_by(agent.own_cert(), ca), CONNECT_TIMEOUT,
                        what="the agent's certificate signed by our CA",
                        extra=lambda: agent.diagnostics(40))
        assert not (agent.certs_dir / "ticket").exists()
        router.wait_for(lambda: router.endpoint_status("agent1")["connected"],
                        CONNECT_TIMEOUT, what="the agent as an authenticated endpoint",
                        extra=lambda: agent.diagnostics(40))
        assert router.metric("router_csr_requests_total", result="signed") >= 1
    finally:
        router.stop()


def test_icinga_node_setup_with_ticket_through_our_satellite(
        tmp_path: Path, icinga_factory: IcingaFactory, icinga2_bin: str) -> None:
    """The same agent behind our satellite (no CA key): the satellite stores and forwards
    the request, our master signs it with the ticket, the satellite hands the certificate
    to the agent, which then connects to the satellite as an authenticated endpoint."""
    master = our_master(tmp_path, icinga_factory, salt=SALT, children=["sat"])
    master.start()
    sat_cert, sat_key = icinga_factory.issue("sat")
    zones = [{"name": "master", "endpoints": ["master"]},
             {"name": "sat", "endpoints": ["sat"], "parent": "master"},
             {"name": "agent1", "endpoints": ["agent1"], "parent": "sat"}]
    sat = RouterNode(tmp_path / "router-sat", "sat", zones=zones,
                     endpoints=[{"name": "master", "port": master.listen_port},
                                {"name": "sat"}, {"name": "agent1"}],
                     cert=sat_cert, key=sat_key, ca=icinga_factory.ca_crt)
    sat.start()
    try:
        sat.wait_for(lambda: sat.endpoint_status("master")["connected"], CONNECT_TIMEOUT,
                     what="satellite connected to the master")
        agent = _node_setup_agent(tmp_path, icinga_factory, icinga2_bin, parent="sat",
                                  port=sat.listen_port)
        assert not (sat.data_dir / "ca" / "ca.key").exists()
        agent.spawn()
        ca = pki.load_certificates(icinga_factory.ca_crt)[0]
        sat.wait_for(lambda: pki.signed_by(agent.own_cert(), ca), 2 * CONNECT_TIMEOUT,
                     what="the agent's certificate signed by our master",
                     extra=lambda: agent.diagnostics(40) + master.log_tail())
        assert master.metric("router_csr_requests_total", result="signed") >= 1
        sat.wait_for(lambda: sat.endpoint_status("agent1")["connected"],
                     CONNECT_TIMEOUT, what="the agent as an authenticated endpoint",
                     extra=lambda: agent.diagnostics(40))
    finally:
        sat.stop()
        master.stop()


def test_our_node_enrolls_itself_with_a_ticket_against_a_real_icinga_master(
        tmp_path: Path, icinga_factory: IcingaFactory) -> None:
    """``router serve --ticket``: our agent starts with a self-signed certificate and
    certs/ticket, the real master signs what it asks for on connecting, we install the
    certificate and reconnect as an authenticated endpoint without a restart."""
    from router.config import TLSConfig
    from router.node import enrollment

    zones = [{"name": "imaster", "endpoints": ["imaster"]},
             {"name": "ours", "endpoints": ["ours"], "parent": "imaster"}]
    icinga = icinga_factory("imaster", "imaster", zones=zones,
                            endpoints=[{"name": "imaster"}, {"name": "ours"}])
    ca_cert, _ = rsa_icinga_ca(icinga)   # Icinga 2.13 signs only with an RSA CA key
    icinga.start()
    certs = tmp_path / "ours-certs"
    certs.mkdir()
    pki.write_certificate(certs / "ca.crt", ca_cert)
    tls_cfg = TLSConfig(ca=str(certs / "ca.crt"), cert=str(certs / "ours.crt"),
                        key=str(certs / "ours.key"))
    assert enrollment.prepare_self_enrollment(tls_cfg, "ours",
                                              pki.ticket("ours", icinga.ticket_salt))
    node = RouterNode(tmp_path / "router-ours", "ours", zones=zones,
                      endpoints=[{"name": "imaster", "port": icinga.api_port},
                                 {"name": "ours"}],
                      cert=certs / "ours.crt", key=certs / "ours.key", ca=certs / "ca.crt",
                      listen=None)
    node.start()
    try:
        node.wait_for(lambda: pki.signed_by(pki.load_certificates(certs / "ours.crt")[0],
                                            ca_cert), CONNECT_TIMEOUT,
                      what="our certificate signed by the Icinga master",
                      extra=lambda: icinga.diagnostics(40))
        assert not (certs / "ticket").exists()

        def authenticated() -> bool:
            endpoint = icinga.endpoint("ours")
            return bool(endpoint and endpoint.get("connected"))
        node.wait_for(authenticated, CONNECT_TIMEOUT,
                      what="the Icinga master seeing us as an authenticated endpoint",
                      extra=lambda: icinga.diagnostics(40) + node.log_tail())
    finally:
        node.stop()
