"""A damaged runtime-objects.json stops the node from starting.

RuntimeObjects.open (router/node/runtime.py:150-157) promises "a damaged file is logged
and started over", but only catches OSError/ValueError around the parse: a file that is
valid JSON but holds a list element that is not an object (``[null]``, ``[1, ...]``, a
nested list: what a half-restored backup or a hand edit leaves) makes ``entry.get`` raise
AttributeError, out of open() and out of RouterService.start(): the satellite does not
start until someone deletes the file by hand."""

from __future__ import annotations

import orjson

from router.node.runtime import RuntimeObjects, runtime_path
from router.routing import ObjectZones, Topology
from router.routing.topology import EndpointSpec, ZoneSpec


def _topology() -> Topology:
    zones = [ZoneSpec("master", ("master",), None), ZoneSpec("sat", ("sat1",), "master"),
             ZoneSpec("agent1", ("agent1",), "sat")]
    return Topology(zones, [EndpointSpec(n) for n in ("master", "sat1", "agent1")], "sat1")


def test_a_damaged_entry_does_not_stop_the_start(tmp_path) -> None:
    path = runtime_path(str(tmp_path))
    path.parent.mkdir(parents=True)
    good = {"zone": "agent1", "params": {"name": "api-host", "type": "Host",
                                         "version": 1.0, "zone": "agent1"}}
    path.write_bytes(orjson.dumps([None, 1, ["x"], good]))
    objects = ObjectZones(_topology())
    try:
        store = RuntimeObjects.open(objects, str(tmp_path))
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"a damaged {path.name} makes the start fail with "
                             f"{type(exc).__name__}: {exc} (promised: logged and started "
                             f"over)") from exc
    assert objects.lookup("api-host") in ("agent1", None), store
