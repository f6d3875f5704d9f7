"""A node that crashed in the middle of its own key rotation does not complete it at start.

docs/pki.md "Renewal" step 4 promises: "the certificate is staged as NAME.crt.new first; a
node that crashed between the two renames completes the swap when it starts".

OwnCertificate.install (router/node/owncert.py:434-436) calls pki.install_key_pair (stage
NAME.crt.new, replace NAME.key, replace NAME.crt) and only afterwards unlinks the pending
key NAME.key.new. So a crash between the key's and the certificate's rename leaves:
NAME.key = new key, NAME.crt = old certificate, NAME.crt.new = the CA-signed certificate
for the new key, and NAME.key.new = the new key (still there).

pki.finish_key_rotation (router/pki/rekey.py:257-258) returns early whenever the staged
certificate certifies NAME.key.new (an exception meant for the self-signed NAME.crt.new of
'router pki request --new-key'), so exactly this crash state is not completed: the node
refuses to start (key and certificate do not match) although everything needed is on disk.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from router import pki
from router.config import TLSConfig
from router.node import enrollment
from tests.conftest import run  # noqa: F401 - the project's fixture (both loops)


def _crash_state(tmp_path: Path):
    from tests.pkiutil import make_test_pki

    own = make_test_pki(tmp_path / "own", ["agent1"])
    ca_cert, ca_key = pki.load_ca(own.directory)
    key_path, cert_path = Path(own.key("agent1")), Path(own.cert("agent1"))
    old_cert = pki.load_certificates(cert_path)[0]
    new_key = pki.generate_key("ec")
    now = dt.datetime.now(dt.timezone.utc)
    new_cert, _ = pki.issue_certificate(ca_cert, ca_key, "agent1", key=new_key,
                                        not_before=now - dt.timedelta(minutes=1))
    # the renewal's pending key, as OwnCertificate._make_key wrote it
    pki.write_private_key(f"{key_path}.new", new_key)
    # pki.install_key_pair, interrupted after its second step (the key is replaced, the
    # certificate not yet); OwnCertificate.install never got to unlink NAME.key.new
    pki.write_certificate(pki.staged_cert_path(cert_path), new_cert)
    pki.write_private_key(key_path, new_key)
    return own, key_path, cert_path, old_cert, new_cert


def test_start_completes_a_rotation_interrupted_inside_owncert_install(tmp_path):
    own, key_path, cert_path, old_cert, new_cert = _crash_state(tmp_path)
    tls_cfg = TLSConfig(ca=str(own.ca_cert), cert=str(cert_path), key=str(key_path))
    # what RouterService.start runs first (router/app.py:94)
    enrollment.finish_key_rotation(tls_cfg)
    on_disk = pki.load_certificates(cert_path)[0]
    assert pki.same_public_key(on_disk, pki.load_private_key(key_path)), (
        "after a crash between the key's and the certificate's rename in "
        "OwnCertificate.install, the start left NAME.key (new key) beside NAME.crt (old "
        "certificate): the node cannot start, although the signed certificate for the new "
        f"key is staged in {pki.staged_cert_path(cert_path).name} (finish_key_rotation skips "
        "it because NAME.key.new still holds the same key)")
    assert on_disk == new_cert


def test_node_starts_after_a_rotation_interrupted_inside_owncert_install(tmp_path, run):
    from tests.nodeutil import ClusterSpec

    own, key_path, cert_path, old_cert, new_cert = _crash_state(tmp_path)
    spec = ClusterSpec(tmp_path, own, [("agent1", ["agent1"], None)])
    error: list[BaseException] = []

    async def main():
        try:
            node = await spec.start("agent1")
        except Exception as exc:  # noqa: BLE001
            error.append(exc)
            return
        await node.stop()

    run(main())
    assert not error, (f"the node does not start after a crash inside its own key rotation "
                       f"(docs/pki.md promises it completes the swap): {error[0]!r}")
