#!/usr/bin/env python3
"""Time ``Router.route()`` for an agent check result (µs per call, min of timeit.repeat).

Topology: master zone (HA pair m1, m2) -> satellite zone (HA pair s1, s2) -> N agent zones
(one endpoint each, host named like the agent), plus a global zone. All adjacent links up.

Scenarios (one TSV row each):
  sat_master_from_agent     s1 (routing master) gets a CheckResult from agent-K
  sat_peer_from_agent       s2 (not routing master) gets the same from agent-K
  sat_peer_from_master_peer s2 gets it from s1 with originZone = agent zone
  master_from_sat           m1 gets it from s1
  master_down_local         m1 originates a SetNextCheck for an agent host (route_local)
  sat_endpoint_fallback     s1, host not configured: resolved by the endpoint-name fallback
  refused_wrong_zone        s1, agent-K reports a host of agent-J

Usage: python perf/bench_route.py [--agents 5000] [--number 20000] [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.routing import ObjectZones, Router  # noqa: E402
from router.routing import EndpointSpec, Topology, ZoneSpec  # noqa: E402


def build(local: str, agents: int, configure_hosts: bool = True) -> Router:
    zones = [ZoneSpec("master", ("m1", "m2")), ZoneSpec("satellite", ("s1", "s2"), "master"),
             ZoneSpec("global-templates", global_=True)]
    eps = [EndpointSpec(n, (("127.0.0.1", 5665),)) for n in ("m1", "m2", "s1", "s2")]
    hosts = {}
    for i in range(agents):
        name = f"agent-{i:05d}"
        zones.append(ZoneSpec(name, (name,), "satellite"))
        eps.append(EndpointSpec(name))
        if configure_hosts:
            hosts[name] = name
    topo = Topology(zones, eps, local)
    return Router(topo, ObjectZones(topo, hosts))


def connected_for(router: Router) -> frozenset[str]:
    return frozenset(router.topology.adjacent_endpoints())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=5000)
    ap.add_argument("--number", type=int, default=20000, help="calls per repeat")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print JSON instead of TSV")
    args = ap.parse_args(argv)

    k = args.agents // 2
    agent = f"agent-{k:05d}"
    other = f"agent-{(k + 1) % args.agents:05d}"
    params = {"host": agent, "service": "disk", "cr": {"state": 0}}

    s1 = build("s1", args.agents)
    s2 = build("s2", args.agents)
    m1 = build("m1", args.agents)
    s1_fallback = build("s1", args.agents, configure_hosts=False)
    c_s1, c_s2, c_m1 = connected_for(s1), connected_for(s2), connected_for(m1)

    scenarios = [
        ("sat_master_from_agent",
         lambda: s1.route("event::CheckResult", params, agent, None, c_s1)),
        ("sat_peer_from_agent",
         lambda: s2.route("event::CheckResult", params, agent, None, c_s2)),
        ("sat_peer_from_master_peer",
         lambda: s2.route("event::CheckResult", params, "s1", agent, c_s2)),
        ("master_from_sat",
         lambda: m1.route("event::CheckResult", params, "s1", None, c_m1)),
        ("master_down_local",
         lambda: m1.route_local("event::SetNextCheck", params, c_m1)),
        ("sat_endpoint_fallback",
         lambda: s1_fallback.route("event::CheckResult", params, agent, None, c_s1)),
        ("refused_wrong_zone",
         lambda: s1.route("event::CheckResult", params, other, None, c_s1)),
    ]

    rows = []
    for name, fn in scenarios:
        d = fn()
        times = timeit.repeat(fn, number=args.number, repeat=args.repeat)
        us = min(times) / args.number * 1e6
        rows.append({"scenario": name, "us_per_call": round(us, 3),
                     "calls_per_s": int(1e6 / us) if us else None,
                     "accepted": d.accepted, "reason": d.reason, "targets": list(d.targets),
                     "agents": args.agents})

    if args.json:
        print(json.dumps({"benchmark": "router.route", "agents": args.agents,
                          "number": args.number, "repeat": args.repeat, "results": rows},
                         indent=2))
    else:
        print("scenario\tus_per_call\tcalls_per_s\taccepted\treason\ttargets")
        for r in rows:
            print(f"{r['scenario']}\t{r['us_per_call']:.3f}\t{r['calls_per_s']}\t"
                  f"{r['accepted']}\t{r['reason'] or '-'}\t{','.join(r['targets']) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
