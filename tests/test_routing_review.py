"""Routing faults a review found (2026-12-07) against Icinga 2.13's semantics, each
failing on the code before its fix: config::DeleteObject (which never carries a zone)
did not travel down to the zone of its object; notification events with a null cr
(an object never checked) and an ExecuteCommand with a string check_timeout were
refused as invalid."""

from __future__ import annotations

import pytest

from router.routing import EndpointSpec, ObjectZones, Router, Topology, ZoneSpec
from router.routing.fields import check_params


# config::DeleteObject never carries "zone" (Icinga 2.11-2.15 ApiListener::DeleteConfigObject
# sets only name/type/version and relays with secobj = the object's zone). An Icinga node that
# receives it deletes the object, and the deletion relays it again towards the object's zone
# (ConfigUpdateObjectHandler -> DeleteConfigObject -> RelayMessage(origin, object zone)).
# The router treats a missing zone as "our zone", so a runtime downtime/host removed on the
# master never reaches the satellite/agent zone that holds it.


ZONES = [
    ZoneSpec("master", ("m1", "m2")),
    ZoneSpec("sat", ("s1", "s2"), parent="master"),
    ZoneSpec("a1", ("a1",), parent="sat"),
]


EPS = [EndpointSpec(n) for n in ("m1", "m2", "s1", "s2", "a1")]


HOSTS = {"a1host": "a1"}


def make(local):
    t = Topology(ZONES, EPS, local)
    return Router(t, ObjectZones(t, HOSTS))


def up(r):
    return frozenset(r.topology.adjacent_endpoints())


UPD = {"name": "a1host!disk!5c2a", "type": "Downtime", "version": 1.0, "zone": "a1",
       "config": "object Downtime ...", "modified_attributes": {}, "original_attributes": []}


DEL = {"name": "a1host!disk!5c2a", "type": "Downtime", "version": 1.0}


def test_satellite_passes_delete_down_to_the_agent_zone_like_the_update():
    s1 = make("s1")
    upd = s1.route("config::UpdateObject", UPD, "m1", None, up(s1))
    assert "a1" in upd.targets                    # creation reaches the agent
    d = s1.route("config::DeleteObject", DEL, "m1", None, up(s1))
    assert d.accepted
    assert "a1" in d.targets, d                   # Icinga's satellite relays it to zone a1


def test_master_passes_delete_from_ha_peer_down_to_the_satellite():
    # m2 (not the routing master) deleted the downtime via its API: it sends only to m1,
    # which must carry it down towards zone a1 (through zone sat).
    m1 = make("m1")
    d = m1.route("config::DeleteObject", DEL, "m2", None, up(m1))
    assert d.accepted
    assert any(t in ("s1", "s2") for t in d.targets), d


# Icinga serialises a missing check result as JSON null: the notification events carry
# ``"cr": Serialize(cr)`` and cr is ``checkable->GetLastCheckResult()``, which is null for a
# checkable that was never checked (acknowledgement, downtime start/end and custom
# notifications fire without a check: checkable.cpp OnNotificationsRequested(...,
# GetLastCheckResult(), ...); Value(nullptr Object::Ptr) is Empty -> JSON null). The receiving
# handlers accept it (``if (vcr && ...)``). check_params refuses the whole message as
# invalid_field and the node counts it against the peer's malformed-message budget.


BASE = {"host": "web01", "service": "http", "cr": None, "type": 8, "author": "admin",
        "text": "maintenance"}


@pytest.mark.parametrize("method,params", [
    ("event::SendNotifications", dict(BASE)),
    ("event::NotificationSentUser", dict(BASE, notification="web01!http!mail",
                                         user="admin", command="mail-service")),
    ("event::NotificationSentToAllUsers", dict(
        BASE, notification="web01!http!mail", users=["admin"], last_notification=0,
        next_notification=0, notification_number=0, last_problem_notification=0,
        no_more_notifications=False)),
])
def test_null_cr_from_icinga_is_valid(method, params):
    assert check_params(method, params) is None


# ``check_timeout`` is declared ``[config] Value check_timeout`` (lib/icinga/checkable.ti):
# Icinga neither validates nor converts it and forwards it verbatim in event::ExecuteCommand
# (checkable-check.cpp ``params->Set("check_timeout", GetCheckTimeout())``, apiactions.cpp
# the same). A string such as a custom variable imported as text (``check_timeout =
# host.vars.timeout`` with ``"60"``) works in Icinga: the agent reads it with Value's double
# conversion. check_params refuses the whole command as invalid_field, so a router agent never
# runs the check and the peer's malformed-message budget is spent.


def test_check_timeout_as_string_is_valid_icinga_input():
    params = {"command_type": "check_command", "command": "disk", "host": "a1",
              "service": "disk", "check_timeout": "60", "macros": {}}
    assert check_params("event::ExecuteCommand", params) is None
