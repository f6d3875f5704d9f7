"""Faults on the wire between our satellite and a real Icinga 2.13 master (issue 21
part 6): real agent -> our satellite -> fault proxy -> real master.

The real agent submits one passive result for each of ``N`` services; the proxy dribbles,
stalls or resets the satellite's connection to the master while they flow. Towards Icinga
we keep Icinga's semantics, at-least-once: every result must show up on the master (none
lost); a result processed twice is allowed (Icinga drops an older execution and an older
``ts`` itself) and counted from the master's CIB for the record.
"""

from __future__ import annotations

import time

import pytest

from perf.icinga import IcingaFactory
from tests.faultproxy import Fault, ThreadedFaultProxy
from .test_router_interop import (
    CHAIN_ZONES,
    CONNECT_TIMEOUT,
    RESULT_TIMEOUT,
    RouterMaker,
    diag,
    make_router,
)

__all__ = ["make_router"]  # the fixture, re-exported so that pytest finds it here

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

N = 24
OBJECTS = """
object Host "agent1" {
  zone = "agent1"
  check_command = "dummy"
  enable_active_checks = false
}
""" + "".join(f"""
object Service "svc{i}" {{
  zone = "agent1"
  host_name = "agent1"
  check_command = "dummy"
  enable_active_checks = false
}}
""" for i in range(N))

#: Each case: the fault for the session that carries the results (a stall or reset
#: strikes 12 KB into it: the TLS handshake, hellos and the master's config sync come
#: first, then the results, about 1 KB each).
CASES = {
    "bytewise-16k": Fault("both", bytewise=16_000),
    "delay-50ms": Fault("both", delay=0.05),
    "stall-past-liveness": Fault("down", stall_after=1, stall=6.0),
    "reset-upstream": Fault("up", reset_after=1),
    "reset-after-partial-write": Fault("up", reset_after=1, partial=True),
}


def cib_results(master) -> float:
    status = master.api("/v1/status/CIB")["results"][0]["status"]
    return float(status.get("passive_service_checks_1min", 0))


@pytest.mark.parametrize("case", sorted(CASES))
def test_results_cross_a_faulty_link_to_icinga(icinga_factory: IcingaFactory,
                                               make_router: RouterMaker, case: str) -> None:
    master = icinga_factory("master", "master",
                            endpoints=[{"name": "master"}, {"name": "sat1"},
                                       {"name": "agent1"}],
                            zones=CHAIN_ZONES, services=OBJECTS)
    master.start()
    fault = CASES[case]
    proxy = ThreadedFaultProxy(master.api_port, [None]).start()
    try:
        router = make_router("sat1", zones=CHAIN_ZONES,
                             timeouts={"heartbeat_interval": 1.0, "liveness": 3.0,
                                       "reconnect_min": 0.2, "reconnect_max": 1.0},
                             endpoints=[{"name": "master", "host": "127.0.0.1",
                                         "port": proxy.port},
                                        {"name": "sat1"}, {"name": "agent1"}])
        router.start()
        agent = icinga_factory("agent1", "agent1",
                               endpoints=[{"name": "master"},
                                          {"name": "sat1", "host": "127.0.0.1",
                                           "port": router.listen_port},
                                          {"name": "agent1"}],
                               zones=CHAIN_ZONES, services=OBJECTS)
        agent.start()
        router.wait_for(lambda: router.endpoint_status("master")["connected"],
                        CONNECT_TIMEOUT, what="our satellite at the master (via the proxy)",
                        extra=lambda: master.diagnostics(40))
        router.wait_for(lambda: router.endpoint_status("agent1")["connected"],
                        CONNECT_TIMEOUT, what="the real agent at our satellite",
                        extra=lambda: agent.diagnostics(40))
        cib0 = cib_results(master)
        # The fault strikes the session that carries the results: plan it for the next
        # connection and cut the current (clean) one; bytes count from that session's
        # start, so "1" means its very first bytes after the handshake began.
        if fault.reset_after is not None or fault.stall_after is not None:
            shifted = Fault(fault.direction, fault.delay, fault.bytewise,
                            None if fault.stall_after is None else 12_000, fault.stall,
                            None if fault.reset_after is None else 12_000, fault.partial)
        else:
            shifted = fault
        proxy.proxy.plan.append(shifted)
        proxy.cut_all()
        outputs = {}
        for i in range(N):
            outputs[f"svc{i}"] = f"{case} result {i}"
            agent.process_check_result("agent1", f"svc{i}", i % 3, outputs[f"svc{i}"])
            time.sleep(0.05)

        def arrived() -> list[str]:
            return [s for s, out in outputs.items()
                    if ((master.service("agent1", s) or {}).get("last_check_result")
                        or {}).get("output") != out]

        missing = router.wait_for(lambda: not arrived() or None,
                                  CONNECT_TIMEOUT + RESULT_TIMEOUT,
                                  what=f"all {N} results on the real master ({case})",
                                  extra=lambda: f"missing {arrived()}; proxy "
                                                f"{proxy.stats}\n"
                                                + diag(router, master, agent))
        assert missing
        assert proxy.stats.connections >= 2
        if fault.reset_after is not None or "liveness" in case:
            # the fault cut the session (it may strike after the last result): our
            # satellite dials again through the proxy
            router.wait_for(lambda: proxy.stats.connections >= 3, CONNECT_TIMEOUT,
                            what=f"a new session after the fault ({proxy.stats})")
        processed = cib_results(master) - cib0
        # at-least-once: each result at least once; duplicates are Icinga's to drop
        assert processed >= N, (processed, N)
    finally:
        proxy.stop()
