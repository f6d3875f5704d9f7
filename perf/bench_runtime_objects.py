"""The event loop's cost of runtime objects at the cap: an agent's connect and a save.

```sh
python -m perf.bench_runtime_objects [--agents 5000] [--per-agent 10] [--repeat 3]
```

``router.node.runtime.RuntimeObjects`` filled with ``--agents`` x ``--per-agent`` objects
(a host and its services per agent zone, ~1 KB each: 50 000 by default, the cap), as a
satellite above 5 000 agents keeps them. Measured, in this process:

- ``for_endpoint`` per agent connect (what a reconnecting agent costs the loop to find
  its share), the mean over 200 agents;
- a ``save()`` on a running loop: the longest gap of a 1 ms ticker while it runs (how long
  the loop stood still), and the save's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.node.runtime import RuntimeObjects, runtime_path  # noqa: E402
from router.routing import ObjectZones, Topology  # noqa: E402
from router.routing.topology import EndpointSpec, ZoneSpec  # noqa: E402


def _topology(agents: int) -> Topology:
    zones = [ZoneSpec("master", ("master",), None), ZoneSpec("sat", ("sat1", "sat2"), "master"),
             ZoneSpec("global-templates", (), None, global_=True)]
    eps = [EndpointSpec(n) for n in ("master", "sat1", "sat2")]
    for i in range(agents):
        zones.append(ZoneSpec(f"agent{i}", (f"agent{i}",), "sat"))
        eps.append(EndpointSpec(f"agent{i}"))
    return Topology(zones, eps, "sat1")


def _fill(store: RuntimeObjects, agents: int, per_agent: int) -> None:
    for i in range(agents):
        for j in range(per_agent):
            name = f"h{i}" if j == 0 else f"h{i}!svc{j}"
            store.observe("config::UpdateObject",
                          {"name": name, "type": "Host" if j == 0 else "Service",
                           "version": 1.0, "zone": f"agent{i}",
                           "config": f'object X "{name}" {{ vars.n = "' + "x" * 800 + '" }',
                           "modified_attributes": {}, "original_attributes": []},
                          f"agent{i}")


async def _save_stall(store: RuntimeObjects) -> tuple[float, float]:
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            gaps.append(time.perf_counter() - t0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    gaps.clear()
    store.changes += 1                  # something to save
    started = time.perf_counter()
    await store.save()
    wall = time.perf_counter() - started
    done = True
    await task
    return max(gaps), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=5000)
    p.add_argument("--per-agent", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    topology = _topology(a.agents)
    with tempfile.TemporaryDirectory() as tmp:
        store = RuntimeObjects(ObjectZones(topology), runtime_path(tmp))
        _fill(store, a.agents, a.per_agent)
        sample = min(200, a.agents)
        connects = []
        for _ in range(a.repeat):
            started = time.perf_counter()
            for i in range(sample):
                store.for_endpoint(topology, f"agent{i}")
            connects.append((time.perf_counter() - started) / sample)
        stalls = [asyncio.run(_save_stall(store)) for _ in range(a.repeat)]
    print(f"{len(store)} objects, {a.agents} agent zones")
    print("for_endpoint per agent connect, ms: "
          + ", ".join(f"{1000 * c:.3f}" for c in connects)
          + f" (median {1000 * statistics.median(connects):.3f})")
    print("save: longest loop stall, ms: " + ", ".join(f"{1000 * s:.1f}" for s, _ in stalls)
          + "; wall, ms: " + ", ".join(f"{1000 * w:.0f}" for _, w in stalls))


if __name__ == "__main__":
    main()
