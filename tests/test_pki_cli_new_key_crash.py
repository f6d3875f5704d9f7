"""``router pki request --new-key`` replaces the key and the certificate in a way a failure
between the two cannot recover from.

router/cli/pki.py:286-290 installs the answer as: write CN.key (the new key), unlink
CN.key.new, unlink CN.crt.new, then write CN.crt. If the last write fails (a full disk, a
crash, a kill), CN.key already holds the new key, CN.crt is still the old certificate, the
pending key file and the self-signed request are gone and the signed certificate was only
in memory. The node no longer starts ("private key does not match the certificate") and
nothing on disk lets it (or finish_key_rotation at start) recover; the old key is lost too.
docs/pki.md promises "only then are the key and the certificate replaced" and "every file
is written atomically"; pki.install_key_pair (stage CN.crt.new first) exists for this and
is what the node's own renewal uses.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from click.testing import CliRunner

from router import pki as pkilib
from router.cli import main
from tests.conftest import run  # noqa: F401 - the project's fixture (both loops)
from tests.test_pki_cli import SALT, signer_spec  # noqa: F401 - fixture


def _cli(*args: str):
    return asyncio.to_thread(CliRunner().invoke, main, list(args))


def test_failed_certificate_write_leaves_a_usable_key_pair(signer_spec, tmp_path, run,
                                                           monkeypatch) -> None:
    spec = signer_spec
    node = tmp_path / "agent"
    certs = node / "certs"
    cert_path, key_path = certs / "agent7.crt", certs / "agent7.key"
    outcome = {}

    async def main_():
        master = await spec.start("master", extra=f'[pki]\nticket_salt = "{SALT}"')
        try:
            port = str(spec.port("master"))
            certs.mkdir(parents=True)
            pkilib.write_certificate(certs / "trusted-parent.crt", pkilib.load_certificates(
                spec.pki.cert("master"))[0])
            base = ["pki", "request", "--host", "127.0.0.1", "--port", port, "--cn",
                    "agent7", "--data-dir", str(node), "--ticket",
                    pkilib.ticket("agent7", SALT)]
            first = await _cli(*base)
            assert first.exit_code == 0, first.output

            # the disk fills up (or the process dies) while the rotation writes CN.crt
            real = pkilib.certs.atomic_write

            def failing(path, data, mode):
                if Path(path) == cert_path:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(path, data, mode)

            monkeypatch.setattr(pkilib.certs, "atomic_write", failing)
            rotated = await _cli(*base, "--new-key")
            monkeypatch.setattr(pkilib.certs, "atomic_write", real)
            outcome["rotated"] = rotated
        finally:
            await master.stop()

    run(main_())
    rotated = outcome["rotated"]
    assert rotated.exit_code != 0, rotated.output     # the failure is reported
    # what the node's start does first (router/app.py:94)
    pkilib.finish_key_rotation(key_path, cert_path)
    on_disk = pkilib.load_certificates(cert_path)[0]
    assert pkilib.same_public_key(on_disk, pkilib.load_private_key(key_path)), (
        "after 'router pki request --new-key' failed while writing the certificate, "
        f"{key_path.name} holds the new key but {cert_path.name} is the old certificate "
        f"(left on disk: {sorted(p.name for p in certs.iterdir())}): the node cannot "
        "start and neither the old key nor the signed certificate is kept to recover")
