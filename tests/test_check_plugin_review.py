"""`router check ...` as a monitoring plugin: every failure to read the node's status must
be UNKNOWN (exit 3, "UNKNOWN: cannot read the node's status: ..."), and bad arguments are
UNKNOWN too (monitoring plugins guidelines: exit 3 "Invalid command line arguments were
supplied to the plugin"). Exit 1 would be WARNING and exit 2 CRITICAL in Icinga."""
from __future__ import annotations

import socket
import threading

import pytest
from click.testing import CliRunner

from router.cli import main as cli_main


class OneShotServer:
    """Accepts connections on 127.0.0.1 and answers each with ``reply``, then closes."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(5)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(self.reply)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()


# A node killed or restarted while it writes its answer (the body is cut short), and a
# --url that points at something that does not speak HTTP (a port typo: an SSH server).
REPLIES = {
    "truncated_body": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 5000\r\nConnection: close\r\n\r\n{\"node\": {"),
    "not_http": b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
}


@pytest.mark.parametrize("command", [["cluster"], ["cluster-zone", "--zone", "agent1"]])
@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_unreadable_status_answer_is_unknown(kind, command) -> None:
    server = OneShotServer(REPLIES[kind])
    try:
        result = CliRunner().invoke(cli_main, ["check", *command, "--url",
                                               f"http://127.0.0.1:{server.port}",
                                               "--timeout", "5"])
    finally:
        server.close()
    assert result.exit_code == 3 and result.output.startswith(
        "UNKNOWN: cannot read the node's status: "), (
        f"router check {' '.join(command)} against a {kind} answer exited "
        f"{result.exit_code} (1 is WARNING in Icinga) instead of 3/UNKNOWN; output "
        f"{result.output!r}, exception {result.exception!r}")


@pytest.mark.parametrize("args", [
    # the documented CheckCommand on a host without vars.cluster_zone: Icinga leaves the
    # "--zone" argument out (its macro does not resolve)
    ["cluster-zone"],
    ["cluster-zone", "--zone", "agent1", "--lag-warning", "5m"],
    ["cluster", "--timeout", "ten"],
    ["cluster", "--no-such-option"],
])
def test_bad_arguments_are_unknown_not_critical(args) -> None:
    result = CliRunner().invoke(cli_main, ["check", *args, "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 3, (
        f"router check {' '.join(args)}: a usage error exited {result.exit_code} "
        f"(2 is CRITICAL in Icinga: a cluster alarm for a typo) instead of 3/UNKNOWN; "
        f"output {result.output!r}")


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_fetch_status_raises_its_documented_error(kind) -> None:
    """statusview.fetch_status promises a StatusFetchError (a RouterError) when the listener
    cannot be read; `router status` turns only that into its one-line error."""
    from router.ops.statusview import StatusFetchError, fetch_status

    server = OneShotServer(REPLIES[kind])
    try:
        with pytest.raises(StatusFetchError):
            fetch_status(f"http://127.0.0.1:{server.port}", timeout=5)
    finally:
        server.close()
