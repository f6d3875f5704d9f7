"""Routing: which cluster messages we accept, and which endpoints we forward them to.

This module is pure (no I/O, no asyncio, no clock). It re-implements the decisions Icinga 2.13.6
takes in ``JsonRpcConnection::MessageHandler`` (origin), the per-method API handlers
(permissions, ``lib/icinga/clusterevents*.cpp``, ``lib/remote/apilistener-configsync.cpp``,
``jsonrpcconnection-pki.cpp``) and ``ApiListener::SyncRelayMessage`` / ``RelayMessageOne`` /
``GetMaster`` (forwarding). This docstring is the written routing spec; the code follows it.

Terms
=====

*sender*
    The endpoint whose connection delivered the message. Messages from anonymous peers never
    reach the router (the node stops them); an unknown sender name is refused ``anonymous``.
*from_zone* (Icinga's ``MessageOrigin::FromZone``)
    The sender's zone, **except** when the sender is in our own zone (an HA peer): then the zone
    named by the message's top-level ``originZone``, or ``None`` when that is missing or names
    no known zone. ``originZone`` is honoured **only** from our own zone; from anybody else it
    is ignored. ``None`` passes every permission check (it means "originated in our zone").
    A message we originate ourselves (:meth:`Router.route_local`) has no sender and
    ``from_zone = None``.
*object zone*
    The zone of the object a message is about, found by :class:`ObjectZones`.

Permission classes
==================

``OBJ``
    Accepted if ``from_zone`` is ``None`` or ``can_access(from_zone, object zone)``: the object
    zone is global, equals ``from_zone``, or ``from_zone`` is one of its ancestors. A parent may
    send downwards; a child only about objects of its own zone (or below it). Refused
    ``wrong_zone`` when ``from_zone`` is below our zone (a child talks about an object of
    another zone), ``not_allowed`` otherwise.
``LOCAL``
    ``from_zone`` is ``None`` or our zone (HA peers only). Else ``not_allowed``.
``DOWN``
    ``from_zone`` is ``None``, our zone, or an ancestor of our zone (the message travels down
    or sideways, never up). Else ``not_allowed``.
``EXEC`` (``event::ExecuteCommand``)
    The sender *endpoint's* zone (not ``from_zone``) is our zone or our direct parent, and then
    ``DOWN``. Else ``not_allowed``.
``CONFIG`` (``config::UpdateObject``/``DeleteObject``)
    The sender *endpoint's* zone is our zone or an ancestor of it (never a child). Else
    ``not_allowed``.
``NONE``
    No zone check (the sender only has to be a known endpoint).

Target zone
===========

Per method (see :data:`METHODS`) the relay starts from one zone:

* checkable events: the zone of ``params["host"]``;
* ``event::SetNextNotification``: the zone of the host part of ``params["notification"]``
  (``"host!service!name"`` or ``"host!name"``: everything before the first ``!``);
* ``event::SetRemovalInfo``: the zone of the host part of ``params["object_name"]``;
* ``LOCAL`` methods: our zone;
* ``event::UpdateExecutions``: permission on the host's zone; a *received* one is relayed to
  our zone (Icinga's handler passes the local zone as secobj), one we originate to the host's
  zone;
* ``config::UpdateObject``/``DeleteObject``: ``params["zone"]`` when present; missing or empty
  (Icinga's DeleteObject never has one) means the zone of the object's host for host-bound
  types when it is ours or below, else our zone; a zone we do not know is refused ``unknown_object`` (Icinga: "Objects zone
  isn't known locally"), except in ``route_local`` where it falls back to our zone;
* ``event::ExecuteCommand`` with ``params["endpoint"]`` naming another endpoint: that
  endpoint's zone, which must be our zone or below it (else ``wrong_zone``; an unknown endpoint
  is ``unknown_object``). Without ``endpoint``, or naming us, the message is for us: accepted,
  no targets, ``local=True``.

Relay (``SyncRelayMessage`` + ``RelayMessageOne``)
===================================================

The message goes to the target zone and then to each ancestor of the target zone, in that
order. For each of these zones (``RelayMessageOne``):

1. only a zone that is global, ours, our parent or a direct child of ours is served; zones
   further away are reached hop by hop through the adjacent zone on the path;
2. a global zone expands to our zone followed by all our direct child zones;
3. per served zone, endpoints in configured order:
   skip ourselves; skip disconnected endpoints; in a zone that is not ours skip further endpoints
   once one was served (so exactly one endpoint per foreign zone: the first connected one that
   is not the sender); skip the sender endpoint; skip every endpoint of ``from_zone``; if we are
   not the routing master skip every endpoint except the routing master.
4. A zone is *unreachable* (the message must go to the replay log, when the method is logged)
   when it has endpoints other than us and none of them is connected. For our own zone every
   other endpoint must receive the message, so our zone counts as unreachable as soon as one of
   its other endpoints is disconnected (Icinga's loop has the same intent but, because it walks
   a pointer-ordered set, only notices a disconnected peer if it comes last; for the usual
   1-2 endpoint zones the two rules agree). Skipped endpoints do not make a zone unreachable,
   and neither the sender's zone nor ``from_zone`` ever is: the message came from there, and
   logging it would replay it back to its origin (the sender counts as present even while the
   node has not added it to ``connected`` yet, e.g. during its replay).

The result lists targets zone by zone in relay order, endpoints within a zone in configured
order; every endpoint appears at most once (a zone is served at most once per message).

Routing master (``GetMaster``): the smallest name (byte order) among our zone's connected
endpoints plus ourselves. A node that is not the routing master sends relayed messages **only**
to the routing master (an endpoint of our own zone); the master forwards to the other zones.
This rule applies to every target zone.

Loop prevention
===============

There is no hop counter and no message id. Loops are prevented only by:

* never sending back to the sender endpoint or to any endpoint of ``from_zone``;
* origin propagation: a relayed message carries ``originZone = from_zone`` (removed when
  ``from_zone`` is ``None``), so an HA peer knows which zone it came from;
* the routing-master rule (only one endpoint of a zone fans out);
* receivers dropping any message whose ``ts`` is older than the last ``ts`` seen from that
  endpoint (done by the node, not here; every relay re-stamps ``ts``).

With zones of one or two endpoints and all adjacent links up this delivers a message about an
object in zone Z, originated anywhere in Z, to every endpoint of Z and of every ancestor of Z
exactly once and to nobody else; a message originated above Z about an object in Z reaches every
endpoint on the path from the originating zone down to Z exactly once. Zones with more than
two endpoints can duplicate (Icinga warns about them, issue #3533).

Exception, global zones: a global zone has no ancestors and expands to "our zone + direct
children", so a message about an object in a global zone only travels *down*: originated at the
root zone it reaches every endpoint exactly once; originated in zone Z it reaches exactly the
endpoints of Z and of Z's descendants, never Z's parent (Icinga behaves the same way).

Exception, ``event::UpdateExecutions``: a *received* one is relayed from our own zone, not from
the host's zone, so it never travels further down than one hop. Originated at the root about
a host in zone Z it reaches the root zone and, only if the originator is the root's routing
master, the direct child zone on the path to Z; deeper zones never see it (Icinga 2.13.6 does
exactly this). Upwards it behaves like every other checkable event.

Side effect of "target zone and all its ancestors": ``LOCAL`` methods, ``config::*Object`` and
an ExecuteCommand for an HA peer are also sent to the parent zone, which refuses them
(``not_allowed``), exactly as an Icinga parent discards them.

Objects and learning
====================

:class:`ObjectZones` (``router.routing.objects``) maps host names to zones: configured hosts
(``[objects.hosts]``, our own checks, the hosts of the zones' synced config files) plus learned
ones. A lookup of an unconfigured, unlearned host falls back to a zone of the same name (not a
global zone: those are in every node's tree), then to
the zone of an endpoint of the same name (command-endpoint agents run their checks on a host
named like the agent endpoint), else it is unknown. So by default (``REJECT``) a child zone may
report only hosts the configuration gives to it or to a zone below it, or hosts named like a
zone or endpoint of that subtree; everything else is refused ``unknown_object``.
For the checkable events (``learn=True`` in the method table) in ``LEARN`` mode (an explicit
opt-in), an unknown host reported with a ``from_zone`` that lies below our zone (a child zone
or deeper) and sent by an endpoint of a child zone or of our own zone (not by a deeper
endpoint that dialled us directly, past its satellite's checks) is learned as
``from_zone``: the first child zone that reports a host owns it;
later reports from other child zones fail ``OBJ`` and are refused ``wrong_zone``. A zone that
has learned ``max_learned_per_zone`` hosts learns no more: ``too_many_learned``. An unknown
host from a parent or a peer (or without ``from_zone``), any unknown object of a non-learning
method, and every unknown host in ``REJECT`` mode are refused ``unknown_object``. Nothing is
learned from a refused message or from :meth:`Router.route_local`.

Consumed methods and refusals
=============================

``icinga::Hello`` and ``event::Heartbeat`` (normally eaten by the peer protocol),
``log::SetLogPosition``, ``pki::RequestCertificate``, ``pki::UpdateCertificate`` (``DOWN``),
``config::Update`` (``DOWN``), ``event::ExecutedCommand`` (``OBJ`` on the host; the node answers
the endpoint that sent the matching ExecuteCommand) and an ExecuteCommand meant for us are
accepted with no targets and ``local=True``: the node consumes them. ``route_local`` of a method
Icinga only ever sends directly (Hello, Heartbeat, SetLogPosition, config::Update,
pki::UpdateCertificate, ExecutedCommand, ExecuteCommand without a foreign ``endpoint``) is refused
``not_routed``; ``route_local`` of ``pki::RequestCertificate`` relays to our zone and its
ancestors, unlogged, as Icinga's pending-request forward does.

Refusal tokens: ``unknown_method`` (not one of the 26 methods of 2.13.6), ``no_params``
(``params`` missing, or the parameter naming the object is missing or not a string),
``anonymous`` (sender is not a known endpoint), ``not_allowed`` (permission class failed, or
the sender endpoint belongs to no zone: Icinga would give such an endpoint a null FromZone and
full rights, we refuse instead), ``unknown_object``, ``wrong_zone``, ``not_routed``,
``too_many_learned`` (learning is on and the reporting zone's learned hosts are at their cap).

``logged`` in a decision says whether Icinga writes the message to the replay log when a target
zone is unreachable (``RelayMessage(..., log=true)``); it is ``False`` for refusals and for
consumed messages. ``local`` says the node should consume the message too (``event::CheckResult``
for the result view, and every consumed method).

Not modelled (the node or nobody handles them): ``accept_config``/``accept_commands``, the
CheckResult exception for the checkable's ``command_endpoint`` (the router does not know
command endpoints; a command-endpoint agent's host resolves to the agent's zone through the
endpoint-name fallback instead), drops of stale ``next_check``/``next_notification`` values,
the capability-126 short cut of ExecuteCommand, and per-endpoint ``local_log_position`` updates
for skipped endpoints.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, NamedTuple

from router.routing.objects import LearnResult, ObjectZones, UnknownObjects
from router.routing.topology import Topology

__all__ = [
    "Perm", "ObjRef", "Target", "MethodSpec", "METHODS", "REASONS",
    "UnknownObjects", "ObjectZones", "RouteDecision", "Router",
]


# --------------------------------------------------------------------------------------------
# Method table
# --------------------------------------------------------------------------------------------

class Perm(Enum):
    """Permission class of a method (see the module docstring)."""

    OBJ = "obj"
    LOCAL = "local"
    DOWN = "down"
    EXEC = "exec"
    CONFIG = "config"
    NONE = "none"


class ObjRef(Enum):
    """Which parameter names the object whose zone the method is about."""

    NONE = "none"
    HOST = "host"                   # params["host"]
    NOTIFICATION = "notification"   # host part of params["notification"]
    OBJECT_NAME = "object_name"     # host part of params["object_name"] (comment/downtime)


class Target(Enum):
    """Where the relay starts (Icinga's secobj)."""

    NONE = "none"                   # not relayed: consumed locally (or refused not_routed)
    OBJECT = "object"               # the object's zone (ObjRef)
    LOCAL_ZONE = "local_zone"       # our zone
    CONFIG_ZONE = "config_zone"     # params["zone"], else our zone
    EXEC_ENDPOINT = "exec_endpoint"  # zone of params["endpoint"] (else consumed: it is for us)


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """How one JSON-RPC method is checked and routed.

    ``target`` applies to a received message (:meth:`Router.route`), ``local_target`` to one we
    originate (:meth:`Router.route_local`); ``Target.NONE`` there means ``not_routed``.
    """

    method: str
    perm: Perm
    obj: ObjRef
    target: Target
    local_target: Target
    logged: bool            # Icinga relays it with log=true (replay log when unreachable)
    local: bool             # this node consumes it (too)
    learn: bool = False     # checkable event: an unknown host may be learned
    needs_params: bool = True


def _spec(method: str, perm: Perm, obj: ObjRef, target: Target, local_target: Target,
          logged: bool, local: bool = False, learn: bool = False,
          needs_params: bool = True) -> tuple[str, MethodSpec]:
    return method, MethodSpec(method, perm, obj, target, local_target, logged, local, learn,
                              needs_params)


_O, _L, _D = Perm.OBJ, Perm.LOCAL, Perm.DOWN
_T_OBJ, _T_LOC, _T_NONE = Target.OBJECT, Target.LOCAL_ZONE, Target.NONE

#: Every method of Icinga 2.13.6 (26), keyed by method name.
METHODS: Final[dict[str, MethodSpec]] = dict((
    # direct, consumed by the peer protocol / the node
    _spec("icinga::Hello", Perm.NONE, ObjRef.NONE, _T_NONE, _T_NONE, False, True,
          needs_params=False),
    _spec("event::Heartbeat", Perm.NONE, ObjRef.NONE, _T_NONE, _T_NONE, False, True,
          needs_params=False),
    _spec("log::SetLogPosition", Perm.NONE, ObjRef.NONE, _T_NONE, _T_NONE, False, True),
    # checkable events: OBJ on the host, relayed to the host's zone, logged
    _spec("event::CheckResult", _O, ObjRef.HOST, _T_OBJ, _T_OBJ, True, True, learn=True),
    _spec("event::SetNextCheck", _O, ObjRef.HOST, _T_OBJ, _T_OBJ, True, learn=True),
    _spec("event::SetLastCheckStarted", _O, ObjRef.HOST, _T_OBJ, _T_OBJ, True, learn=True),
    _spec("event::SetForceNextCheck", _O, ObjRef.HOST, _T_OBJ, _T_OBJ, True, learn=True),
    _spec("event::SetForceNextNotification", _O, ObjRef.HOST, _T_OBJ, _T_OBJ, True,
          learn=True),
    _spec("event::SetAcknowledgement", _O, ObjRef.HOST, _T_OBJ, _T_OBJ, True, learn=True),
    _spec("event::ClearAcknowledgement", _O, ObjRef.HOST, _T_OBJ, _T_OBJ, True, learn=True),
    _spec("event::UpdateExecutions", _O, ObjRef.HOST, _T_LOC, _T_OBJ, True, learn=True),
    # notification object
    _spec("event::SetNextNotification", _O, ObjRef.NOTIFICATION, _T_OBJ, _T_OBJ, True),
    # HA-internal state: LOCAL, relayed without secobj (= our zone), logged
    _spec("event::SetStateBeforeSuppression", _L, ObjRef.NONE, _T_LOC, _T_LOC, True),
    _spec("event::SetSuppressedNotifications", _L, ObjRef.NONE, _T_LOC, _T_LOC, True),
    _spec("event::SetSuppressedNotificationTypes", _L, ObjRef.NONE, _T_LOC, _T_LOC, True),
    _spec("event::SendNotifications", _L, ObjRef.NONE, _T_LOC, _T_LOC, True),
    _spec("event::NotificationSentUser", _L, ObjRef.NONE, _T_LOC, _T_LOC, True),
    _spec("event::NotificationSentToAllUsers", _L, ObjRef.NONE, _T_LOC, _T_LOC, True),
    # command execution
    _spec("event::ExecuteCommand", Perm.EXEC, ObjRef.NONE, Target.EXEC_ENDPOINT,
          Target.EXEC_ENDPOINT, True),
    _spec("event::ExecutedCommand", _O, ObjRef.HOST, _T_NONE, _T_NONE, False, True),
    # comments/downtimes removal info: DOWN, relayed to the object's zone
    _spec("event::SetRemovalInfo", _D, ObjRef.OBJECT_NAME, _T_OBJ, _T_OBJ, True),
    # config sync
    _spec("config::Update", _D, ObjRef.NONE, _T_NONE, _T_NONE, False, True),
    _spec("config::UpdateObject", Perm.CONFIG, ObjRef.NONE, Target.CONFIG_ZONE,
          Target.CONFIG_ZONE, False),
    _spec("config::DeleteObject", Perm.CONFIG, ObjRef.NONE, Target.CONFIG_ZONE,
          Target.CONFIG_ZONE, True),
    # certificates
    _spec("pki::RequestCertificate", Perm.NONE, ObjRef.NONE, _T_NONE, _T_LOC, False, True),
    _spec("pki::UpdateCertificate", _D, ObjRef.NONE, _T_NONE, _T_NONE, False, True),
))

#: Every refusal token :class:`Router` may return.
REASONS: Final = ("unknown_method", "no_params", "anonymous", "not_allowed",
                  "unknown_object", "wrong_zone", "not_routed", "too_many_learned")


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------

# ObjectZones and UnknownObjects live in router.routing.objects (imported above).


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RouteDecision:
    accepted: bool
    reason: str | None                 # refusal token (metric label) when not accepted
    targets: tuple[str, ...]           # endpoints to send to (deduplicated, deterministic order)
    unreachable: tuple[str, ...]       # target zones with endpoints but none connected (replay log)
    object_zone: str | None
    logged: bool                       # Icinga would persist it in the replay log
    local: bool                        # this node should also consume it (result view)


class _Missing(Enum):
    """Type of the :data:`_MISSING` sentinel (an enum member, so ``is`` narrows it)."""

    MISSING = 0


_REFUSED: Final = {r: RouteDecision(False, r, (), (), None, False, False) for r in REASONS}
_CONSUMED: Final = RouteDecision(True, None, (), (), None, False, True)
_MISSING: Final = _Missing.MISSING

# A relay plan is a tuple of (zone name, endpoints of that zone except us, is our zone), one per
# served zone, in relay order, zones without other endpoints left out.
_Plan = tuple[tuple[str, tuple[str, ...], bool], ...]

# Hot-path constants: enum attribute access costs ~80 ns in CPython 3.11, so the router works
# on small ints compiled from the method table.
_P_OBJ, _P_LOCAL, _P_DOWN, _P_EXEC, _P_CONFIG, _P_NONE = range(6)
_PERM_CODE = {Perm.OBJ: _P_OBJ, Perm.LOCAL: _P_LOCAL, Perm.DOWN: _P_DOWN, Perm.EXEC: _P_EXEC,
              Perm.CONFIG: _P_CONFIG, Perm.NONE: _P_NONE}
_T_CODE_NONE, _T_CODE_OBJECT, _T_CODE_LOCAL, _T_CODE_CONFIG, _T_CODE_EXEC = range(5)
_TARGET_CODE = {Target.NONE: _T_CODE_NONE, Target.OBJECT: _T_CODE_OBJECT,
                Target.LOCAL_ZONE: _T_CODE_LOCAL, Target.CONFIG_ZONE: _T_CODE_CONFIG,
                Target.EXEC_ENDPOINT: _T_CODE_EXEC}
_LEARN = UnknownObjects.LEARN
_LEARNED = LearnResult.LEARNED
_ZONE_FULL = LearnResult.ZONE_FULL

# Fast constructor for the frozen dataclass: the generated __init__ goes through
# object.__setattr__ once per field (~0.75 us); setting the slots directly halves that.
_new = object.__new__
(_set_accepted, _set_reason, _set_targets, _set_unreachable, _set_object_zone, _set_logged,
 _set_local) = (RouteDecision.__dict__[f].__set__ for f in (
    "accepted", "reason", "targets", "unreachable", "object_zone", "logged", "local"))


def _decision(targets: tuple[str, ...], unreachable: tuple[str, ...], object_zone: str | None,
              logged: bool, local: bool) -> RouteDecision:
    """An accepted :class:`RouteDecision` (same result as the dataclass constructor)."""
    d = _new(RouteDecision)
    _set_accepted(d, True)
    _set_reason(d, None)
    _set_targets(d, targets)
    _set_unreachable(d, unreachable)
    _set_object_zone(d, object_zone)
    _set_logged(d, logged)
    _set_local(d, local)
    return d


def _refuse(reason: str, object_zone: str | None = None) -> RouteDecision:
    if object_zone is None:
        return _REFUSED[reason]
    return RouteDecision(False, reason, (), (), object_zone, False, False)


class _Compiled(NamedTuple):
    perm: int
    key: str | None          # params key naming the object (None: no object)
    split: bool              # take the part before the first "!"
    learn: bool
    target: int
    local_target: int
    logged: bool
    local: bool
    needs_params: bool


#: Object types named ``host``, ``host!service`` or ``host![service!]name``: their zone is
#: their host's.
_HOST_BOUND_TYPES = frozenset({"Host", "Service", "Comment", "Downtime", "Notification",
                               "ScheduledDowntime", "Dependency"})


def _compile(spec: MethodSpec) -> _Compiled:
    return _Compiled(_PERM_CODE[spec.perm],
                     None if spec.obj is ObjRef.NONE else spec.obj.value,
                     spec.obj in (ObjRef.NOTIFICATION, ObjRef.OBJECT_NAME),
                     spec.learn, _TARGET_CODE[spec.target], _TARGET_CODE[spec.local_target],
                     spec.logged, spec.local, spec.needs_params)


class Router:
    """Accept/refuse and fan-out decisions for one node. Pure; O(path length) per call."""

    __slots__ = (
        "topology", "objects", "_me", "_local", "_parent", "_ep_zone", "_zones", "_below",
        "_down_ok", "_exec_from", "_access", "_plans", "_local_sorted", "_methods",
        "_learn_via",
    )

    def __init__(self, topology: Topology, objects: ObjectZones) -> None:
        t = topology
        self.topology = t
        self.objects = objects
        me = t.local_endpoint
        local = t.local_zone
        self._me = me
        self._local = local
        self._parent = t.parent_zone
        self._methods = {m: _compile(spec) for m, spec in METHODS.items()}
        self._ep_zone: dict[str, str | None] = {ep: t.zone_of(ep) for ep in t.endpoint_names}
        self._zones = frozenset(t.zone_names)
        below = [z for z in t.zone_names if t.is_ancestor(local, z)]
        self._below = frozenset(below)
        self._down_ok = frozenset((local, *t.ancestors(local)))
        self._exec_from = frozenset(z for z in (local, t.parent_zone) if z is not None)
        # Learning needs the message to come through the tree: from a child zone's endpoint
        # (which checked its own subtree) or an HA peer. An agent of a grandchild zone that
        # dials us directly (a configured endpoint is admitted wherever it sits) would
        # otherwise claim hosts its satellite refuses it (review).
        self._learn_via = frozenset((local, *t.child_zones))
        # zones allowed to speak about objects of each zone; None: global, everybody
        self._access: dict[str, frozenset[str] | None] = {}
        for z in t.zone_names:
            spec = t.zone(z)
            assert spec is not None  # z is one of t.zone_names
            self._access[z] = None if spec.global_ else frozenset((z, *t.ancestors(z)))
        children = frozenset(t.child_zones)
        self._plans: dict[str, _Plan] = {z: self._build_plan(z, children) for z in t.zone_names}
        local_spec = t.zone(local)
        assert local_spec is not None  # the topology guarantees the local zone
        self._local_sorted = tuple(sorted(local_spec.endpoints))

    # -- precomputation --------------------------------------------------------------------

    def _build_plan(self, target: str, children: frozenset[str]) -> _Plan:
        t = self.topology
        local, me = self._local, self._me
        out: list[tuple[str, tuple[str, ...], bool]] = []
        seen: set[str] = set()
        for z in (target, *t.ancestors(target)):
            spec = t.zone(z)
            assert spec is not None  # a zone of the topology or one of its ancestors
            if spec.global_:
                served: tuple[str, ...] = (local, *t.child_zones)
            elif z == local or z == self._parent or z in children:
                served = (z,)
            else:
                continue
            for s in served:
                if s in seen:
                    continue
                seen.add(s)
                served_spec = t.zone(s)
                assert served_spec is not None  # our zone, a child zone or a zone above
                eps = tuple(e for e in served_spec.endpoints if e != me)
                if eps:
                    out.append((s, eps, s == local))
        return tuple(out)

    # -- public API ------------------------------------------------------------------------

    def from_zone(self, sender: str, origin_zone: str | None) -> str | None:
        """Icinga's FromZone for a message from ``sender`` (None for an unknown sender)."""
        szone = self._ep_zone.get(sender)
        if szone is None:
            return None
        if szone == self._local:
            return origin_zone if origin_zone in self._zones else None
        return szone

    def routing_master(self, connected: AbstractSet[str]) -> str:
        """Smallest name among our zone's connected endpoints plus ourselves."""
        me = self._me
        for ep in self._local_sorted:
            if ep == me or ep in connected:
                return ep
        return me  # not reached: we are in our zone

    def plan(self, zone: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Served zones and their candidate endpoints for a relay starting at ``zone`` (debug)."""
        return tuple((z, eps) for z, eps, _ in self._plans.get(zone, ()))

    def _config_object_zone(self, params: Any) -> str | None:
        """Where a ``config::*Object`` without ``zone`` goes: the zone a runtime object was
        created in (router.node.runtime), else its host's."""
        zone = self.objects.runtime_zone(params.get("type"), params.get("name"))
        if zone is not None and zone in self._zones:
            return zone
        return self._host_bound_zone(params)

    def _host_bound_zone(self, params: Any) -> str | None:
        """The zone of a config object's host (``config::*Object`` without ``zone``), when
        it is ours or below ours; else None."""
        if params.get("type") not in _HOST_BOUND_TYPES:
            return None
        name = params.get("name")
        if type(name) is not str:
            return None
        host = name.partition("!")[0]
        zone = self.objects._map.get(host) or self.objects.lookup(host)
        if zone is not None and (zone == self._local or zone in self._below):
            return zone
        return None

    def route(self, method: str, params: dict[str, Any] | None, sender: str,
              origin_zone: str | None, connected: AbstractSet[str]) -> RouteDecision:
        """Decide what to do with ``method`` received from the known endpoint ``sender``."""
        c = self._methods.get(method)
        if c is None:
            return _REFUSED["unknown_method"]
        if params is None and c.needs_params:
            return _REFUSED["no_params"]
        szone = self._ep_zone.get(sender, _MISSING)
        if szone is _MISSING:
            return _REFUSED["anonymous"]
        if szone is None:
            return _REFUSED["not_allowed"]
        if szone == self._local:
            from_zone = origin_zone if origin_zone in self._zones else None
        else:
            from_zone = szone
        return self._decide(c, params, sender, szone, from_zone, connected, c.target)

    def route_local(self, method: str, params: dict[str, Any] | None,
                    connected: AbstractSet[str]) -> RouteDecision:
        """Decide where a message this node originates goes (no sender, no from_zone)."""
        c = self._methods.get(method)
        if c is None:
            return _REFUSED["unknown_method"]
        if c.local_target == _T_CODE_NONE:
            return _REFUSED["not_routed"]
        if params is None and c.needs_params:
            return _REFUSED["no_params"]
        return self._decide(c, params, None, None, None, connected, c.local_target)

    # -- core ------------------------------------------------------------------------------

    def _decide(self, c: _Compiled, params: dict[str, Any] | None, sender: str | None,
                szone: str | None, from_zone: str | None, connected: AbstractSet[str],
                target: int) -> RouteDecision:
        perm = c.perm
        local = self._local

        # zone checks that do not depend on the object
        if perm == _P_OBJ or perm == _P_NONE:
            pass
        elif perm == _P_LOCAL:
            if from_zone is not None and from_zone != local:
                return _REFUSED["not_allowed"]
        elif perm == _P_DOWN:
            if from_zone is not None and from_zone not in self._down_ok:
                return _REFUSED["not_allowed"]
        elif perm == _P_EXEC:
            if sender is not None and szone not in self._exec_from:
                return _REFUSED["not_allowed"]
            if from_zone is not None and from_zone not in self._down_ok:
                return _REFUSED["not_allowed"]
        else:  # _P_CONFIG
            if sender is not None and szone not in self._down_ok:
                return _REFUSED["not_allowed"]

        # the object and its zone (every method with an object key, a CONFIG or an EXEC target
        # needs params, so the callers already refused a missing params: the ignores below)
        obj_zone = None
        key = c.key
        if key is not None:
            name = params.get(key)  # type: ignore[union-attr]
            if type(name) is not str:
                return _REFUSED["no_params"]
            if c.split:
                name = name.partition("!")[0]
            objects = self.objects
            obj_zone = objects._map.get(name)
            if obj_zone is None:
                obj_zone = objects.lookup(name)
                if obj_zone is None:
                    if (c.learn and from_zone in self._below and szone in self._learn_via
                            and objects.unknown is _LEARN):
                        learned = objects.learn(name, from_zone)
                        if learned is not _LEARNED:
                            return _REFUSED["too_many_learned" if learned is _ZONE_FULL
                                            else "unknown_object"]
                        obj_zone = from_zone
                    else:
                        return _REFUSED["unknown_object"]
            if perm == _P_OBJ and from_zone is not None:
                allowed = self._access[obj_zone]
                if allowed is not None and from_zone not in allowed:
                    return _refuse("wrong_zone" if from_zone in self._below else "not_allowed",
                                   obj_zone)

        # where the relay starts
        if target == _T_CODE_OBJECT:
            tz = obj_zone
        elif target == _T_CODE_LOCAL:
            tz = local
        elif target == _T_CODE_NONE:
            if obj_zone is None:
                return _CONSUMED
            return _decision((), (), obj_zone, False, True)
        elif target == _T_CODE_CONFIG:
            z = params.get("zone")  # type: ignore[union-attr]
            if z is None or z == "":
                # Icinga's DeleteObject carries no zone: it is relayed towards the zone of
                # the object, which for host-bound objects is their host's; as "our zone"
                # a deletion never reached the agent that held the object (review).
                tz = self._config_object_zone(params) or local
            elif z in self._zones:
                tz = z
            elif sender is not None:
                return _REFUSED["unknown_object"]
            else:
                tz = local
        else:  # _T_CODE_EXEC
            ep = params.get("endpoint")  # type: ignore[union-attr]
            if ep is None or ep == self._me:
                return _CONSUMED if sender is not None else _REFUSED["not_routed"]
            if type(ep) is not str:
                return _REFUSED["no_params"]
            tz = self._ep_zone.get(ep)
            if tz is None:
                return _REFUSED["unknown_object"]
            if tz != local and tz not in self._below:
                return _refuse("wrong_zone", tz)

        # tz is a str: only an OBJECT target takes obj_zone, and every OBJECT method names an
        # object (ObjRef), so obj_zone was set above; the checker cannot see that table fact.
        targets, unreachable = self._relay(
            self._plans[tz], sender, from_zone, connected)  # type: ignore[index]
        return _decision(targets, unreachable, tz, c.logged, c.local)

    def _relay(self, plan: _Plan, sender: str | None, from_zone: str | None,
               connected: AbstractSet[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        me = self._me
        master = me
        for ep in self._local_sorted:
            if ep == me:
                break
            if ep in connected:
                master = ep
                break
        is_master = master == me
        targets: list[str] = []
        unreachable: list[str] | None = None
        for zname, eps, is_local in plan:
            if is_local:
                missing = False
                skip_zone = zname == from_zone
                for ep in eps:
                    if ep not in connected:
                        # The sender is alive by definition even when the node has not
                        # put it in the connected set yet (it may still be replaying).
                        if ep != sender:
                            missing = True
                    elif skip_zone or ep == sender or (not is_master and ep != master):
                        continue
                    else:
                        targets.append(ep)
                if missing:
                    if unreachable is None:
                        unreachable = [zname]
                    else:
                        unreachable.append(zname)
            else:
                skip_zone = zname == from_zone or not is_master
                reached = False
                for ep in eps:
                    if ep in connected:
                        reached = True
                        if skip_zone:
                            break
                        if ep == sender:
                            continue
                        targets.append(ep)
                        break
                if not reached and zname != from_zone and sender not in eps:
                    if unreachable is None:
                        unreachable = [zname]
                    else:
                        unreachable.append(zname)
        return tuple(targets), (tuple(unreachable) if unreachable else ())
