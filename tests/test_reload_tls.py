"""TLS diagnostics and self-healing: failure streaks rebuild the context, chain size."""

from __future__ import annotations

import asyncio
import logging
import ssl

from router.transport import tls, tlslib
from tests.nodeutil import ClusterSpec, FakePeer, client_ssl_context, metrics_text, wait_until
from tests.pkiutil import make_test_pki


def test_streak_needs_same_reason_several_peers_and_no_success() -> None:
    fired: list[str] = []
    streak = tls.FailureStreak(threshold=4, min_peers=2, window=60, cooldown=300)
    streak.on_streak = fired.append
    for i in range(10):
        assert not streak.failed("eof", f"10.0.0.{i}", i)        # noise never counts
    for i in range(5):
        assert not streak.failed("unknown_ca", "10.0.0.1", 10 + i)  # one peer only
    assert streak.failed("unknown_ca", "10.0.0.2", 16)
    assert fired == ["unknown_ca"] and streak.triggers == 1
    # cooldown: a new streak right after does not fire again
    for i in range(6):
        assert not streak.failed("other", f"10.0.1.{i}", 20 + i)
    assert fired == ["unknown_ca"]
    # after the cooldown it does
    assert [streak.failed("other", f"10.0.2.{i}", 400 + i) for i in range(4)] == [
        False, False, False, True]


def test_streak_is_broken_by_success_other_reason_or_time() -> None:
    streak = tls.FailureStreak(threshold=3, min_peers=1, window=10)
    streak.failed("other", "a", 0)
    streak.failed("other", "a", 1)
    streak.succeeded()
    assert not streak.failed("other", "a", 2)
    assert not streak.failed("other", "a", 3)
    assert not streak.failed("bad_certificate", "a", 4)      # another reason starts anew
    assert not streak.failed("bad_certificate", "a", 5)
    assert not streak.failed("bad_certificate", "a", 20)     # the window passed
    assert not streak.failed("bad_certificate", "a", 21)
    assert streak.failed("bad_certificate", "a", 22)


def test_chain_size_and_warning(tmp_path, caplog, monkeypatch) -> None:
    pki = make_test_pki(tmp_path, ["node"])
    count, size = tls.chain_size(pki.ca_cert, pki.cert("node"))
    assert count == 2 and 300 < size < 4000
    caplog.set_level(logging.WARNING, logger="router.tls")
    assert tlslib.check_chain_size(pki.ca_cert, pki.cert("node")) == size
    assert "certificate chain" not in caplog.text
    monkeypatch.setattr(tls, "CHAIN_WARN_BYTES", 100)
    tlslib.contexts("bundled", pki.ca_cert, pki.cert("node"), pki.key("node"))
    assert f"the certificate chain we send is 2 certificates, {size} bytes" in caplog.text


async def _failing_handshake(port: int, pki, name: str, source: str) -> None:
    ctx = client_ssl_context(pki, name)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="master",
            local_addr=(source, 0)), 5)
        await asyncio.wait_for(reader.read(100), 5)      # the server closes on us
        writer.close()
    except (ssl.SSLError, OSError, asyncio.TimeoutError):
        pass


def test_repeated_identical_failures_rebuild_the_context(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"], other_ca_names=["intruder"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])

    async def main():
        master = await spec.start("master")
        try:
            streak = master.node.tls_failures
            streak.threshold = 6
            before = master.node.server_context
            for i in range(6):
                await _failing_handshake(spec.port("master"), pki, "intruder",
                                         f"127.0.0.{2 + i % 3}")
            await wait_until(lambda: master.reloader.tls_rebuilds.total() == 1,
                             what="context rebuilt")
            assert master.node.server_context is not before
            assert streak.triggers == 1
            assert master.node.handshake_failures.get(("unknown_ca",)) >= 6
            text = await metrics_text(master)
            assert 'router_tls_context_rebuilds_total{result="ok"} 1.0' in text
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: "agent1" in master.node.connections, what="agent1")
            assert streak.count == 0                          # success ends the streak
            await agent.close()
        finally:
            await master.stop()

    run(main())
