"""Topology: validation, relations and Icinga's CanAccessObject."""

from __future__ import annotations

import pytest

from router.errors import ConfigError
from router.routing import EndpointSpec, Relation, Topology, ZoneSpec

ZONES = [
    ZoneSpec("master", ("m1", "m2")),
    ZoneSpec("sat", ("s1", "s2"), parent="master"),
    ZoneSpec("sat-b", ("sb1",), parent="master"),
    ZoneSpec("a1", ("a1",), parent="sat"),
    ZoneSpec("a2", ("a2",), parent="sat"),
    ZoneSpec("global-templates", global_=True),
    ZoneSpec("director-global", global_=True),
]
ENDPOINTS = [
    EndpointSpec("m1", (("10.0.0.1", 5665),)),
    EndpointSpec("m2", (("10.0.0.2", 5665),)),
    EndpointSpec("s1", (("10.0.1.1", 5665), ("sat1.example.com", 5665))),
    EndpointSpec("s2"),
    EndpointSpec("sb1", (("10.0.2.1", 5665),)),
    EndpointSpec("a1", (("10.0.3.1", 5665),)),
    EndpointSpec("a2"),
    EndpointSpec("loose"),  # in no zone: allowed
]


def topo(local: str = "s1", zones=ZONES, endpoints=ENDPOINTS) -> Topology:
    return Topology(zones, endpoints, local)


# -- structure -------------------------------------------------------------------------------

def test_local_view_of_a_satellite() -> None:
    t = topo("s1")
    assert t.local_endpoint == "s1"
    assert t.local_zone == "sat"
    assert t.parent_zone == "master"
    assert t.child_zones == ("a1", "a2")
    assert t.global_zones == ("global-templates", "director-global")
    assert t.zone_names[0] == "master"
    assert "loose" in t.endpoint_names


def test_root_and_leaf_views() -> None:
    m = topo("m1")
    assert m.parent_zone is None
    assert m.child_zones == ("sat", "sat-b")
    a = topo("a1")
    assert a.parent_zone == "sat"
    assert a.child_zones == ()


def test_global_zones_are_never_children() -> None:
    for local in ("m1", "s1", "a1"):
        t = topo(local)
        assert not set(t.child_zones) & set(t.global_zones)
        assert t.children("master") == ("sat", "sat-b")


def test_peers_and_parents_are_exactly_the_peer_and_parent_relations() -> None:
    for local, expected in (("s1", ("s2", "m1", "m2")), ("m1", ("m2",)), ("a1", ("s1", "s2"))):
        t = topo(local)
        assert t.peers_and_parents() == expected
        assert set(expected) == {e for e in t.endpoint_names
                                 if t.relation(e) in (Relation.PEER, Relation.PARENT)}


def test_lookups() -> None:
    t = topo()
    assert t.zone("sat") == ZoneSpec("sat", ("s1", "s2"), "master")
    assert t.zone("nope") is None
    assert t.endpoint("s1").addresses[1] == ("sat1.example.com", 5665)
    assert t.endpoint("nope") is None
    assert t.zone_of("a2") == "a2"
    assert t.zone_of("loose") is None
    assert t.zone_of("nope") is None


def test_ancestors_and_is_ancestor() -> None:
    t = topo()
    assert t.ancestors("a1") == ("sat", "master")
    assert t.ancestors("sat") == ("master",)
    assert t.ancestors("master") == ()
    assert t.ancestors("global-templates") == ()
    assert t.ancestors("unknown") == ()
    assert t.is_ancestor("master", "a1")
    assert t.is_ancestor("sat", "a1")
    assert not t.is_ancestor("a1", "a1")  # strict
    assert not t.is_ancestor("a1", "sat")
    assert not t.is_ancestor("sat-b", "a1")
    assert not t.is_ancestor("global-templates", "a1")


@pytest.mark.parametrize(("from_zone", "obj_zone", "expected"), [
    ("a1", "a1", True),            # equal
    ("sat", "a1", True),           # parent
    ("master", "a1", True),        # grandparent
    ("a1", "sat", False),          # child about its parent's object
    ("a2", "a1", False),           # sibling
    ("sat-b", "a1", False),        # cousin subtree
    ("a1", "global-templates", True),
    ("master", "global-templates", True),
    ("global-templates", "a1", False),
    ("global-templates", "global-templates", True),
    ("a1", "unknown", False),
    ("unknown", "a1", False),
])
def test_can_access(from_zone: str, obj_zone: str, expected: bool) -> None:
    assert topo().can_access(from_zone, obj_zone) is expected


@pytest.mark.parametrize(("local", "endpoint", "relation"), [
    ("s1", "s1", Relation.SELF),
    ("s1", "s2", Relation.PEER),
    ("s1", "m1", Relation.PARENT),
    ("s1", "m2", Relation.PARENT),
    ("s1", "a1", Relation.CHILD),
    ("s1", "a2", Relation.CHILD),
    ("s1", "sb1", Relation.OTHER),
    ("s1", "loose", Relation.OTHER),
    ("s1", "nope", None),
    ("m1", "a1", Relation.OTHER),    # grandchild: not adjacent
    ("m1", "sb1", Relation.CHILD),
    ("a1", "a2", Relation.OTHER),    # sibling agent
    ("a1", "s2", Relation.PARENT),
    ("a1", "m1", Relation.OTHER),
])
def test_relation(local: str, endpoint: str, relation: Relation | None) -> None:
    assert topo(local).relation(endpoint) is relation


@pytest.mark.parametrize(("local", "zone", "relation"), [
    ("s1", "sat", "local"),
    ("s1", "master", "parent"),
    ("s1", "a1", "child"),
    ("s1", "sat-b", "other"),    # sibling satellite zone
    ("s1", "global-templates", "global"),
    ("s1", "nope", "other"),
    ("m1", "master", "local"),
    ("m1", "a1", "other"),       # grandchild zone
    ("a1", "sat", "parent"),
])
def test_zone_relation(local: str, zone: str, relation: str) -> None:
    assert topo(local).zone_relation(zone) == relation


def test_adjacent_endpoints_and_dial_targets() -> None:
    t = topo("s1")
    assert t.adjacent_endpoints() == ("s2", "m1", "m2", "a1", "a2")
    assert [e.name for e in t.dial_targets()] == ["m1", "m2", "a1"]  # s2, a2 have no address
    m = topo("m2")
    assert m.adjacent_endpoints() == ("m1", "s1", "s2", "sb1")
    assert [e.name for e in m.dial_targets()] == ["m1", "s1", "sb1"]
    a = topo("a2")
    assert a.adjacent_endpoints() == ("s1", "s2")


def test_list_valued_specs_are_normalised() -> None:
    zones = [ZoneSpec("z", ["e1", "e2"]), ZoneSpec("c", ["e3"], "z")]  # type: ignore[arg-type]
    eps = [EndpointSpec("e1", [["h", 1]]), EndpointSpec("e2"), EndpointSpec("e3")]  # type: ignore
    t = Topology(zones, eps, "e1")
    assert t.zone("z").endpoints == ("e1", "e2")
    assert t.endpoint("e1").addresses == (("h", 1),)
    assert t.adjacent_endpoints() == ("e2", "e3")


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("zones", "endpoints", "local", "needle"), [
    # zone endpoint does not exist
    ([ZoneSpec("z", ("e1", "ghost"))], [EndpointSpec("e1")], "e1", "ghost"),
    # endpoint in two zones
    ([ZoneSpec("z", ("e1",)), ZoneSpec("y", ("e1",))], [EndpointSpec("e1")], "e1", "e1"),
    # endpoint twice in one zone
    ([ZoneSpec("z", ("e1", "e1"))], [EndpointSpec("e1")], "e1", "e1"),
    # unknown parent
    ([ZoneSpec("z", ("e1",), "nowhere")], [EndpointSpec("e1")], "e1", "nowhere"),
    # global parent
    ([ZoneSpec("g", global_=True), ZoneSpec("z", ("e1",), "g")], [EndpointSpec("e1")], "e1",
     "'g'"),
    # cycle
    ([ZoneSpec("a", ("e1",), "b"), ZoneSpec("b", (), "a")], [EndpointSpec("e1")], "e1",
     "cycle"),
    # self parent
    ([ZoneSpec("a", ("e1",), "a")], [EndpointSpec("e1")], "e1", "'a'"),
    # global zone with a parent
    ([ZoneSpec("p", ("e1",)), ZoneSpec("g", (), "p", global_=True)], [EndpointSpec("e1")],
     "e1", "'g'"),
    # global zone with endpoints
    ([ZoneSpec("g", ("e1",), global_=True)], [EndpointSpec("e1")], "e1", "'g'"),
    # local endpoint unknown
    ([ZoneSpec("z", ("e1",))], [EndpointSpec("e1")], "me", "'me'"),
    # local endpoint in no zone
    ([ZoneSpec("z", ("e1",))], [EndpointSpec("e1"), EndpointSpec("me")], "me", "'me'"),
    # duplicate zone
    ([ZoneSpec("z", ("e1",)), ZoneSpec("z")], [EndpointSpec("e1")], "e1", "'z'"),
    # duplicate endpoint
    ([ZoneSpec("z", ("e1",))], [EndpointSpec("e1"), EndpointSpec("e1")], "e1", "'e1'"),
    # empty names
    ([ZoneSpec("", ("e1",))], [EndpointSpec("e1")], "e1", "zone"),
    ([ZoneSpec("z", ("e1",))], [EndpointSpec("e1"), EndpointSpec("")], "e1", "endpoint"),
])
def test_invalid_topologies_raise_config_error(zones, endpoints, local, needle) -> None:
    with pytest.raises(ConfigError) as exc:
        Topology(zones, endpoints, local)
    assert needle in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_long_cycle_is_detected() -> None:
    zones = [ZoneSpec("r", ("e1",)), ZoneSpec("a", (), "c"), ZoneSpec("b", (), "a"),
             ZoneSpec("c", (), "b")]
    with pytest.raises(ConfigError, match="cycle"):
        Topology(zones, [EndpointSpec("e1")], "e1")


def test_deep_chain_is_fine() -> None:
    zones = [ZoneSpec("z0", ("e0",))] + [ZoneSpec(f"z{i}", (f"e{i}",), f"z{i - 1}")
                                          for i in range(1, 50)]
    t = Topology(zones, [EndpointSpec(f"e{i}") for i in range(50)], "e49")
    assert len(t.ancestors("z49")) == 49
    assert t.ancestors("z49")[0] == "z48"
    assert t.ancestors("z49")[-1] == "z0"


def test_start_up_line_names_a_few_child_zones_and_counts_the_rest() -> None:
    from router.node import describe_topology, name_list

    assert name_list([]) == "-"
    assert name_list(["a", "b"]) == "a, b"
    assert name_list([f"z{i}" for i in range(5000)]) == "z0, z1, z2, z3, z4 and 4995 more"
    line = describe_topology(topo("s1"))
    assert line == "endpoint s1 in zone sat (parent master; 2 child zones a1, a2)"
    many = [ZoneSpec("top", ("t",))] + [ZoneSpec(f"c{i}", (f"e{i}",), "top")
                                        for i in range(300)]
    eps = [EndpointSpec("t")] + [EndpointSpec(f"e{i}") for i in range(300)]
    line = describe_topology(Topology(many, eps, "t"))
    assert "300 child zones c0, c1, c2, c3, c4 and 295 more" in line and len(line) < 200
