"""``router pki request`` crashes with a Python traceback when the parent answers a frame that
is not JSON.

router/cli/pki.py:189 decodes each frame with ``orjson.loads(frame)``; a malformed frame
raises ``orjson.JSONDecodeError`` (a ValueError), which neither ``_exchange``'s
``except (OSError, ssl.SSLError)`` nor ``operator_errors`` (RouterError, OSError) catches:
the operator gets a traceback instead of the one-line ``Error: ...`` every other failure
of the command (wrong parent, refusal, no answer, garbage certificate) gives.
"""

from __future__ import annotations

import socket
import ssl
import threading

from click.testing import CliRunner

from router import pki as pkilib
from router.cli import main
from tests.pkiutil import make_test_pki


def _garbage_parent(test_pki, answer: bytes) -> tuple[int, threading.Thread]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(test_pki.cert("master"), test_pki.key("master"))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            with ctx.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(10)
                conn.recv(65536)                    # the request
                conn.sendall(answer)
                conn.recv(1)                        # until the client is done
        except OSError:
            pass
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_malformed_answer_is_a_one_line_error(tmp_path):
    test_pki = make_test_pki(tmp_path / "pki", ["master"])
    node = tmp_path / "agent"
    certs = node / "certs"
    certs.mkdir(parents=True)
    pkilib.write_certificate(certs / "trusted-parent.crt",
                             pkilib.load_certificates(test_pki.cert("master"))[0])
    body = b'{"jsonrpc": "2.0", "id": '                  # cut short: not JSON
    port, thread = _garbage_parent(test_pki, b"%d:%s," % (len(body), body))
    result = CliRunner().invoke(main, ["pki", "request", "--host", "127.0.0.1", "--port",
                                       str(port), "--cn", "agent7", "--data-dir", str(node),
                                       "--timeout", "5"])
    thread.join(15)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), (
        "a parent answering a frame that is not JSON makes 'router pki request' crash with "
        f"an uncaught {type(result.exception).__name__}: {result.exception} (a traceback, "
        "not the one-line 'Error: ...' of every other failure)")
