"""Security review (2026-12-07): ways an agent reached what is not its own, each failing on
the code before its fix.

- A host named like a *global* zone ("global-templates") resolved to that zone, which
  everybody may speak about and which is relayed to our zone and every child zone: an
  agent sent check results and acknowledgements for it to every sibling agent and into
  the replay logs of the offline ones. Icinga drops a message for a host that does not
  exist, and a zone name is never a host.
- With ``[objects] unknown = "learn"``, an agent below a satellite that dialled the master
  directly (a configured endpoint is admitted wherever it sits, as in Icinga) had the
  master learn a sibling's host for it, past the satellite's ownership check.
- An enrolled agent was exempt from the enrollment limits meant for anonymous peers and
  filled the node-wide ``max_pending_requests`` in one burst of throw-away requests:
  every later enrollment and renewal through that node was refused for days.
"""
from __future__ import annotations

import asyncio

import pytest

from router import pki as pkilib
from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

CR = "event::CheckResult"
GLOBAL = '[[zones]]\nname = "global-templates"\nendpoints = []\nglobal = true\n'


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "agent1", "agent2", "sat", "a1", "a2"])


REQ = "pki::RequestCertificate"


async def ask(peer, cert, request_id):
    peer.send(REQ, {"cert_request": pkilib.certificate_pem(cert), "ticket": ""},
              id=request_id)
    await wait_until(lambda: [m for m in peer.received if m.get("id") == request_id],
                     what=f"answer to {request_id}", timeout=30)
    return [m for m in peer.received if m.get("id") == request_id][0]["result"]


def test_one_agent_cannot_lock_out_enrollment_for_everybody(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat"], "master"),
                                       ("agent1", ["agent1"], "sat")])
    cap, per_minute = 40, 10
    junk = [pkilib.self_signed_certificate(pkilib.generate_key("ec"), f"junk{i}")
            for i in range(cap + 5)]
    newcomer = pkilib.self_signed_certificate(pkilib.generate_key("ec"), "newagent")

    async def main():
        sat = await spec.start("sat", extra=(
            f"[pki]\nmax_pending_requests = {cap}\nrequests_per_minute = {per_minute}\n"))
        try:
            a1 = await FakePeer.connect(spec.port("sat"), pki, "agent1", server_name="sat")
            await wait_until(lambda: a1.messages("icinga::Hello"), what="hello")
            answers = [await ask(a1, c, f"j{i}") for i, c in enumerate(junk)]
            stored = sum(1 for a in answers if a["status_code"] == 2)
            assert not a1.closed                 # refused, but its session stays
            new = await FakePeer.connect(spec.port("sat"), pki, None, server_name="sat")
            await wait_until(lambda: new.messages("icinga::Hello"), what="hello")
            result = await ask(new, newcomer, "new")
            await a1.close()
            await new.close()
            assert result["status_code"] == 2, result.get("error")
            assert stored <= 2, stored           # PENDING_PER_AGENT
        finally:
            await sat.stop()

    run(main(), timeout=120)


def spec_for(tmp_path, pki) -> ClusterSpec:
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master")])


async def connected_agent(spec, pki, name):
    agent = await FakePeer.connect(spec.port("master"), pki, name, server_name="master")
    await wait_until(lambda: agent.messages("icinga::Hello"), what=f"hello to {name}")
    return agent


def test_agent_cannot_broadcast_to_sibling_via_global_zone_named_host(tmp_path, pki, run):
    spec = spec_for(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=GLOBAL)
        try:
            a1 = await connected_agent(spec, pki, "agent1")
            a2 = await connected_agent(spec, pki, "agent2")
            # control: a plain invented host is refused and reaches nobody
            a1.send(CR, check_result("invented", None, "x"))
            # the attack: host named like the global zone
            a1.send(CR, check_result("global-templates", "svc", "CRITICAL injected by agent1",
                                     state=2))
            a1.send("event::SetAcknowledgement", {
                "host": "global-templates", "service": "svc", "author": "agent1",
                "comment": "acked by agent1", "acktype": 1, "notify": False,
                "persistent": False, "expiry": 0, "change_time": 1.0})
            # a marker that certainly gets processed after the above
            a1.send(CR, check_result("agent1", None, "marker"))
            await wait_until(lambda: master.node.results.get("agent1", None) is not None,
                             what="marker processed")
            await asyncio.sleep(0.3)
            leaked = [m for m in a2.received
                      if m.get("method") in (CR, "event::SetAcknowledgement")]
            stats = master.node.stats["agent1"]
            refused = {k: v for k, v in stats.refused.items()}
            await a1.close()
            await a2.close()
            # Expected (Icinga: the host object does not exist -> discarded; even a real
            # host in a global zone is never "owned" by agent1): refused, nothing relayed
            # to the sibling agent.
            assert leaked == [], (
                f"agent2 received {len(leaked)} message(s) injected by agent1: "
                f"{[(m['method'], m['params'].get('host')) for m in leaked]}; "
                f"refusals at master: {refused}")
        finally:
            await master.stop()

    run(main())


def test_agent_cannot_fill_offline_siblings_replay_logs_via_global_zone_named_host(
        tmp_path, pki, run):
    """Same hole, second effect: agent2 is offline, so the master writes agent1's
    injected messages into *agent2's* replay log (and every other offline sibling's):
    they are replayed to agent2 when it reconnects and count against agent2's share of
    the byte cap (docs/security.md: an agent cannot 'push other zones' messages out of the
    replay log')."""
    spec = spec_for(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=GLOBAL)
        try:
            a1 = await connected_agent(spec, pki, "agent1")
            for i in range(20):
                a1.send(CR, check_result("global-templates", f"svc{i}", "injected", state=2))
            a1.send(CR, check_result("agent1", None, "marker"))
            await wait_until(lambda: master.node.results.get("agent1", None) is not None,
                             what="marker processed")
            await asyncio.to_thread(master.node.replay.writer.flush, 5.0)
            records = master.node.replay.store.zone_records("agent2")
            await a1.close()
            assert records == 0, (
                f"{records} records injected by agent1 sit in agent2's replay log")
        finally:
            await master.stop()

    run(main())


def test_agent_below_satellite_cannot_claim_sibling_host_by_dialling_the_master(
        tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat"], "master"),
                                       ("a1", ["a1"], "sat"),
                                       ("a2", ["a2"], "sat")], dialled={"master"})

    async def main():
        master = await spec.start("master", extra='[objects]\nunknown = "learn"\n')
        # The satellite's configuration says db1 belongs to agent a1.
        sat = await spec.start("sat", extra='[objects.hosts]\n"db1" = "a1"\n')
        try:
            await wait_until(lambda: "sat" in master.node.connected_names,
                             what="satellite connected to the master")
            a1 = await FakePeer.connect(spec.port("sat"), pki, "a1", server_name="sat")
            await wait_until(lambda: a1.messages("icinga::Hello"), what="a1 hello")
            # control: a2 through its own satellite is refused (db1 is a1's)
            a2_via_sat = await FakePeer.connect(spec.port("sat"), pki, "a2", server_name="sat")
            await wait_until(lambda: a2_via_sat.messages("icinga::Hello"), what="a2 hello")
            a2_via_sat.send(CR, check_result("db1", None, "forged via sat", state=2))
            await wait_until(lambda: sat.node.stats["a2"].refused.get((CR, "wrong_zone")),
                             what="satellite refuses a2's claim")
            await a2_via_sat.close()
            await wait_until(lambda: "a2" not in sat.node.connections, what="a2 gone")

            # the attack: a2 dials the master directly
            a2 = await FakePeer.connect(spec.port("master"), pki, "a2", server_name="master")
            await wait_until(lambda: a2.messages("icinga::Hello"), what="a2 hello (master)")
            a2.send(CR, check_result("db1", None, "CRITICAL forged by a2", state=2))
            await asyncio.sleep(0.5)
            learned = master.node.objects.learned_hosts()
            stored = master.node.results.get("db1", None)
            at_a1 = [m for m in a1.messages(CR) if m["params"]["host"] == "db1"]
            await a2.close()
            await a1.close()
            # Expected: refused at the master (a2 is not one of its child endpoints;
            # Icinga: FromZone a2 cannot access db1's zone, and unknown hosts are dropped).
            assert learned.get("db1") is None, f"master learned db1 for zone {learned['db1']!r}"
            assert stored is None, f"master stored a2's forged result: {stored}"
            assert at_a1 == [], f"a1 received {len(at_a1)} forged results for its host db1"
        finally:
            await sat.stop()
            await master.stop()

    run(main())
