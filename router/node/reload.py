"""Reload in-process: a new configuration without dropping the sessions that may stay.

Icinga restarts its whole cluster stack on every reload, so every agent reconnects every
time a master reloads, which in practice is every 20-30 minutes (users.md P1, P2). Here a
reload (SIGHUP, ``router reload``, ``POST /v1/actions/reload``) is a small state machine,
``idle -> loading -> applying -> idle``, with a deadline:

1. **loading**: the configuration is read again the way the node was started (the TOML,
   or zones.conf plus command-line options) and validated exactly as ``router config
   check`` does; the zone tree is built for this node; when the TLS files changed (the
   CRL of ``[tls] crl_file`` included), new TLS contexts are built from them (which
   checks that the key matches the certificate, the certificate chains to the CA and the
   CRL is the CA's and current). Any problem refuses the reload: the error,
   with file and line, is logged, counted (``router_reloads_total{result="refused"}``)
   and returned, and nothing has changed.
2. **applying**, in one step of the event loop (no message can be routed half-way): the
   topology, object zones (learned hosts carried over) and router are swapped, send
   queue limits and message size limits updated on the live sessions, the replay log's
   zone list recomputed, the TLS contexts swapped for new handshakes. Sessions of
   endpoints that were removed or moved to another zone, or whose relation to this node
   changed, are closed cleanly (their replay log stays on disk), and so are sessions whose
   peer certificate the new ``[tls] crl_file`` revokes; every other session stays. Then
   the reload hooks other components registered run (:class:`ReloadHooks`; synchronous
   ones in the same loop step), and the service replaces the dialler when its targets
   changed.

The outcome of the last reload is in ``/v1/status`` (``reload``) and the counter
``router_reloads_total{result}`` (``ok``, ``refused``, ``failed``, ``busy``).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from cryptography import x509

from router import pki
from router.config import CheckSpec, RouterConfig, advisories
from router.config.diff import ConfigDiff, diff_configs
from router.errors import ConfigError, RouterError
from router.node.filemodes import check_key_modes
from router.ops.logs import set_log_level
from router.ops.exposition import metrics_route
from router.ops.http import Response, Route, WithHeaders, json_response
from router.ops.metrics import LabeledCounter, MetricFamily
from router.routing import ObjectZones, Router, Topology, UnknownObjects
from router.transport import tlslib
from router.transport.sendqueue import Ledger, QueueLimits

if TYPE_CHECKING:  # pragma: no cover
    from router.node.core import Node

__all__ = ["ReloadHook", "ReloadHooks", "ReloadPhase", "ReloadRecord", "Reloader",
           "PreparedReload", "apply_to_node", "prepare", "queue_limits", "replay_zones",
           "tls_fingerprint", "status_routes", "close_revoked", "RELOAD_RESULTS",
           "DEFAULT_DEADLINE"]

log = logging.getLogger("router.reload")

#: Values of the ``result`` label of ``router_reloads_total``.
RELOAD_RESULTS = ("ok", "refused", "failed", "busy")
#: Seconds a reload may take from start to the end of its hooks.
DEFAULT_DEADLINE = 30.0
#: ``sys.setswitchinterval`` while the configuration loads in a worker thread (default
#: 5 ms): the loop waits at most this long for the GIL.
LOADING_SWITCH_INTERVAL = 0.0005


class ReloadHook(Protocol):
    """A component's reaction to a new configuration (``config-sync``, ``pki``, ...).

    Called after the node applied the configuration; it may return an awaitable. An
    exception is logged and makes the reload's result ``failed`` (the node keeps the
    new configuration: it was valid)."""

    def __call__(self, config: RouterConfig, diff: ConfigDiff) -> Awaitable[None] | None: ...


class ReloadHooks:
    """Named reload hooks: components register here instead of being imported by the
    reload code (``hooks.register("configsync", component.reload)``)."""

    def __init__(self) -> None:
        self._hooks: dict[str, ReloadHook] = {}
        #: The node's current topology, for components that cache it (set by the Reloader).
        self.topology_of: Callable[[], Topology] | None = None

    def register(self, name: str, hook: ReloadHook) -> None:
        self._hooks[name] = hook

    def register_component(self, name: str, component: object) -> None:
        """Register a component's own ``reload()`` method, if it has one.

        Components that cache the node's topology (an attribute ``topology``) get the
        new one first; ``reload()`` is called with ``(config, diff)``, ``(config)`` or no
        arguments, whichever its signature takes."""
        method = getattr(component, "reload", None)
        if not callable(method):
            return
        arity = len(inspect.signature(method).parameters)
        topology_of = self.topology_of

        def hook(config: RouterConfig, diff: ConfigDiff) -> Awaitable[None] | None:
            if topology_of is not None and hasattr(component, "topology"):
                try:
                    setattr(component, "topology", topology_of())
                except AttributeError:
                    pass            # a property that follows the node by itself
            args = (config, diff)[:min(arity, 2)]
            result = method(*args)
            return result if inspect.isawaitable(result) else None

        self.register(name, hook)

    def unregister(self, name: str) -> None:
        self._hooks.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._hooks)

    async def run(self, config: RouterConfig, diff: ConfigDiff) -> list[str]:
        """Run every hook in registration order; the names of those that failed."""
        failed = []
        for name, hook in list(self._hooks.items()):
            try:
                result = hook(config, diff)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("reload hook %s failed", name)
                failed.append(name)
        return failed


class ReloadPhase(Enum):
    IDLE = "idle"
    LOADING = "loading"
    APPLYING = "applying"


@dataclass(slots=True)
class ReloadRecord:
    """What one reload did (the ``reload.last`` of ``/v1/status``)."""

    trigger: str
    started: float
    finished: float = 0.0
    result: str = ""
    error: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    sessions_closed: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "started": self.started, "finished": self.finished,
                "duration": round(self.finished - self.started, 6), "result": self.result,
                "error": self.error, "changes": self.changes,
                "sessions_closed": self.sessions_closed,
                "restart_required": self.restart_required}


# --------------------------------------------------------------------------- pure parts


def queue_limits(config: RouterConfig) -> QueueLimits:
    """The send-queue water marks of ``[limits]`` (as the node computes them at start)."""
    limits = config.limits
    return QueueLimits(
        high_bytes=limits.send_queue_high_bytes, low_bytes=limits.send_queue_low_bytes,
        high_messages=limits.send_queue_high_messages,
        low_messages=limits.send_queue_low_messages,
        hard_bytes=max(4 * limits.send_queue_high_bytes, limits.send_queue_high_bytes))


def replay_zones(topology: Topology, durations: Mapping[str, float]
                 ) -> dict[str, tuple[str, ...]]:
    """Zones that keep a replay log: our own, the parent and the direct children, when one
    of their endpoints (other than us) has a log_duration other than 0."""
    zones: dict[str, tuple[str, ...]] = {}
    for zone in (topology.local_zone, topology.parent_zone, *topology.child_zones):
        if zone is None:
            continue
        spec = topology.zone(zone)
        endpoints = tuple(e for e in spec.endpoints
                          if e != topology.local_endpoint) if spec else ()
        if any(durations.get(e, 86400.0) != 0 for e in endpoints):
            zones[zone] = endpoints
    return zones


def tls_fingerprint(config: RouterConfig) -> str:
    """SHA-256 over the CA, certificate, key and CRL files (a missing one as a marker with
    its path), so that files replaced under the same names count as a TLS change (a CRL
    re-issued by ``router ca revoke`` included)."""
    digest = hashlib.sha256()
    crl = () if config.tls.crl_file is None else (config.tls.crl_file,)
    for path in (config.tls.ca, config.tls.cert, config.tls.key, *crl):
        try:
            with open(path, "rb") as fh:
                digest.update(fh.read())
        except OSError:
            digest.update(b"\0missing\0" + path.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(slots=True)
class PreparedReload:
    """A validated new configuration with everything built that could fail."""

    config: RouterConfig
    diff: ConfigDiff
    topology: Topology
    objects: ObjectZones
    router: Router
    fingerprint: str
    contexts: tuple[tlslib.TLSLibrary, tlslib.TLSLibrary] | None
    #: The ``[tls] crl_file`` the new contexts check, when the TLS material changed:
    #: established sessions whose certificate it revokes are closed when applying.
    crl: x509.CertificateRevocationList | None = None


def _object_hosts(config: RouterConfig, topology: Topology,
                  checks: Iterable[CheckSpec]) -> dict[str, str]:
    hosts = dict(config.objects.hosts)
    for check in checks:  # our own checks' hosts live in their zone (or ours)
        hosts.setdefault(check.host, check.zone or topology.local_zone)
    return hosts


def prepare(old: RouterConfig, old_fingerprint: str, new: RouterConfig,
            running_checks: Iterable[CheckSpec] | None = None) -> PreparedReload:
    """Build the new topology, object zones and TLS contexts; nothing running is touched.

    Runs in a worker thread (it reads the TLS files). Raises a ``RouterError``
    (``ConfigError``, ``TLSSetupError``) with the reason when the configuration cannot
    be applied. ``running_checks``: the ``[[checks]]`` the node runs (restart-only: a
    reload does not change them), whose hosts stay known; their results were refused as
    unknown objects when the new file renamed or removed them (review). Default: the new
    configuration's.
    """
    if new.node.name != old.node.name:
        raise _refusal(f"node.name cannot change on reload ({old.node.name!r} -> "
                       f"{new.node.name!r}): restart the node")
    fingerprint = tls_fingerprint(new)
    diff = diff_configs(old, new, old_tls_fingerprint=old_fingerprint,
                        new_tls_fingerprint=fingerprint)
    topology = Topology(new.zones, new.endpoints, new.node.name)
    checks = new.checks if running_checks is None else running_checks
    carried = ObjectZones(topology, hosts=_object_hosts(new, topology, checks),
                          unknown=UnknownObjects(new.objects.unknown),
                          max_learned_per_zone=new.objects.max_learned_per_zone)
    contexts = None
    crl = None
    if diff.tls:
        # A start refuses a key others may read; so does a reload, the documented way to
        # put a new key into service (CA rollover, step 4; review).
        check_key_modes(new.tls.key, refusing="the reload")
        # The library is a restart-only key: new contexts use the running one.
        contexts = tlslib.contexts(old.tls.library, new.tls.ca, new.tls.cert, new.tls.key,
                                   new.tls.crl_file)
        if new.tls.crl_file is not None:
            crl = pki.check_crl_file(new.tls.crl_file, new.tls.ca)
    return PreparedReload(new, diff, topology, carried, Router(topology, carried),
                          fingerprint, contexts, crl)


def _refusal(text: str) -> RouterError:
    return ConfigError(text, key="node.name")


def sessions_to_close(node: Node, topology: Topology) -> list[str]:
    """Connected endpoints the new topology does not keep as they were: removed, in
    another zone, or related to us differently (parent, child, peer)."""
    old = node.topology
    close = []
    for endpoint in node.connections:
        if (topology.endpoint(endpoint) is None
                or topology.zone_of(endpoint) != old.zone_of(endpoint)
                or topology.relation(endpoint) != old.relation(endpoint)):
            close.append(endpoint)
    return sorted(close)


def close_revoked(node: Node, crl: x509.CertificateRevocationList) -> list[str]:
    """Close the established sessions whose peer certificate ``crl`` revokes (new
    handshakes are refused by the new contexts); who they were."""
    closed = []
    for conn in list(node.all_connections):
        der = conn.peer_certificate_der()
        if der is None:     # still handshaking, with the context of its accept
            node.sessions.crl_pending[conn] = crl
            continue
        who = conn.endpoint or conn.identity or "unidentified"
        if node.sessions.close_if_revoked(conn, crl, "reload"):
            closed.append(who)
    return closed


def renamed_zones(old: Topology, new: Topology) -> list[tuple[str, str]]:
    """Zones that left with a reload and came back under a new name: the same endpoints
    (at least one), nothing else that could claim them."""
    gone = {frozenset(z.endpoints): z.name for name in old.zone_names
            if new.zone(name) is None and (z := old.zone(name)) is not None and z.endpoints}
    out = []
    for name in new.zone_names:
        z = new.zone(name)
        if old.zone(name) is None and z is not None and z.endpoints:
            before = gone.pop(frozenset(z.endpoints), None)
            if before is not None:
                out.append((before, name))
    return out


def apply_to_node(node: Node, prepared: PreparedReload) -> list[str]:
    """Swap the prepared configuration into the node, in one loop step; the endpoints
    whose sessions were closed."""
    config, topology = prepared.config, prepared.topology
    closing = sessions_to_close(node, topology)
    # Learned hosts are carried over here, in the loop step of the swap: none learned
    # between loading and applying is lost.
    skipped = prepared.objects.load_learned(node.objects.learned_hosts())
    # A counter (router_objects_learn_refused_total): a reload must not reset it (review).
    for zone, n in node.objects.learn_refused.items():
        prepared.objects.learn_refused[zone] = prepared.objects.learn_refused.get(zone, 0) + n
    for host, zone, why in skipped[:20]:
        log.info("reload: learned host %s (zone %s) not carried over: %s", host, zone, why)
    if node.runtime is not None:
        for type_, name in node.runtime.attach(prepared.objects)[:20]:
            log.info("reload: runtime object %s %r dropped: its zone is gone", type_, name)
    # What the sessions to close hold goes to the logs of the zones their endpoints are
    # in now, before the swap: after it, an endpoint moved to another zone had its
    # frames logged (and replayed) there, and one removed had them dropped (review).
    for endpoint in closing:
        leaving = node.connections.get(endpoint)
        if leaving is not None:
            node.sessions.keep_written(leaving)
            node.sessions.keep_unsent(leaving)
    if node.replay is not None:
        for old_zone, new_zone in renamed_zones(node.topology, topology):
            node.replay.rename_zone(old_zone, new_zone)
    node.config = config
    if topology.local_zone_ha and not node.topology.local_zone_ha:
        node.receipts.paths_multiplied()
    node.topology = topology
    node.objects = prepared.objects
    node.router = prepared.router
    limits = queue_limits(config)
    node.queue_limits = limits
    # Caps that live in their own objects apply to what comes next: new connections,
    # new results (a smaller result view sheds its oldest entries as new ones arrive).
    admission = node.admission
    admission.max_unauthenticated = config.limits.max_unauthenticated
    admission.max_per_address = config.limits.max_unauthenticated_per_address
    admission.idle_grace = config.timeouts.unauthenticated_idle
    admission.stall_after = config.timeouts.handshake_stall
    admission.max_handshakes = config.limits.max_concurrent_handshakes
    admission.set_rate(config.limits.new_connections_per_second,
                       config.limits.new_connections_burst)
    node.turn_budget.budget = config.limits.admission_us_per_turn / 1e6
    if node.results is not None:
        node.results.max_results = config.limits.max_results
        node.results.max_per_zone = config.limits.max_results_per_zone
    for endpoint, conn in node.connections.items():
        if conn.queue is not None:
            conn.queue.limits = limits
        if conn.peer is not None and endpoint not in closing:
            conn.peer.max_message_size = node.max_message_size(endpoint)
    if node.replay is not None:
        node.replay.zones = replay_zones(topology, config.endpoint_log_duration)
        # A zone whose log was turned on: its sessions keep what they are written
        # until confirmed from now on, as a new session would (else a relay confirmed
        # upstream what was only in their sockets; found by review).
        for endpoint, conn in node.connections.items():
            if conn.ledger is None and endpoint not in closing \
                    and node.replay.keeps_log(endpoint):
                conn.ledger = Ledger()
    if prepared.contexts is not None:
        node.server_context, node.client_context = prepared.contexts
    if prepared.diff.log_level:
        set_log_level(config.log_level)
        node.debug_changed()
    for endpoint in closing:
        leaving = node.connections.get(endpoint)
        if leaving is None:
            continue
        gone = topology.endpoint(endpoint) is None
        node.disconnects.inc(("reload",))
        node.log_peer(leaving, logging.INFO, "closing: %s on reload",
                      "endpoint removed from the configuration" if gone
                      else "endpoint's zone or relation changed")
        leaving.close("reload: endpoint removed" if gone else "reload: endpoint changed zone")
    # Anonymous sessions whose certificate now names a configured endpoint reconnect
    # as that endpoint.
    for conn in list(node.anonymous):
        if conn.identity is not None and topology.endpoint(conn.identity) is not None:
            node.log_peer(conn, logging.INFO, "closing anonymous session: its CN is a "
                          "configured endpoint now, it reconnects as one")
            conn.close("reload: now a configured endpoint")
    if prepared.crl is not None:
        closing = sorted({*closing, *close_revoked(node, prepared.crl)})
    return closing


# --------------------------------------------------------------------------- the machine


class Reloader:
    """Runs reloads one at a time: ``idle -> loading -> applying -> idle``.

    ``load`` reads and validates the configuration (raises ``RouterError``); it runs in a
    worker thread. ``apply_service`` is the service's part after the node's (the dialler).
    """

    def __init__(self, node: Node, load: Callable[[], RouterConfig], *,
                 apply_service: Callable[[PreparedReload], Awaitable[None]] | None = None,
                 hooks: ReloadHooks | None = None,
                 deadline: float = DEFAULT_DEADLINE) -> None:
        self.node = node
        self.load = load
        self.apply_service = apply_service
        self.hooks = hooks if hooks is not None else ReloadHooks()
        self.hooks.topology_of = lambda: node.topology
        self.deadline = deadline
        self.phase = ReloadPhase.IDLE
        self.counts = LabeledCounter(("result",))
        self.last: ReloadRecord | None = None
        self.last_ok: float | None = None
        self.fingerprint = tls_fingerprint(node.config)
        #: TLS contexts rebuilt after a streak of identical handshake failures, by result.
        self.tls_rebuilds = LabeledCounter(("result",))
        self._tasks: set[asyncio.Task[bool]] = set()
        node.tls_failures.on_streak = self._on_tls_streak

    # -- self-healing TLS (users.md P1)

    def _on_tls_streak(self, reason: str) -> None:
        streak = self.node.tls_failures
        log.warning("%d TLS handshakes in a row failed with %s (from %d or more peers): "
                    "rebuilding the TLS context from %s", streak.threshold, reason,
                    streak.min_peers, self.node.config.tls.cert)
        task = asyncio.get_running_loop().create_task(self.rebuild_tls(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def rebuild_tls(self, reason: str) -> bool:
        """Fresh TLS contexts from the configured files for new handshakes; False (old
        contexts kept) when the files do not load."""
        node = self.node
        config = node.config
        tls_cfg = config.tls
        try:
            contexts = await asyncio.to_thread(tlslib.contexts, tls_cfg.library, tls_cfg.ca,
                                               tls_cfg.cert, tls_cfg.key, tls_cfg.crl_file)
            fingerprint = await asyncio.to_thread(tls_fingerprint, config)
        except RouterError as exc:
            self.tls_rebuilds.inc(("failed",))
            log.error("rebuilding the TLS context after %s failures failed, keeping the "
                      "old one: %s", reason, exc)
            return False
        if node.config is not config or self.phase is not ReloadPhase.IDLE:
            # A reload ran meanwhile (or runs): it built contexts of its own, from files
            # this rebuild may not have read. Installing these put the old certificate
            # back, and the next reload saw nothing to change (review).
            log.info("TLS context rebuild after %s failures dropped: a reload came first",
                     reason)
            return False
        node.server_context, node.client_context = contexts
        self.fingerprint = fingerprint
        self.tls_rebuilds.inc(("ok",))
        log.warning("TLS context rebuilt from disk after repeated %s handshake failures",
                    reason)
        return True

    async def reload(self, trigger: str) -> ReloadRecord:
        """One reload; never raises (the outcome is in the record)."""
        record = ReloadRecord(trigger=trigger, started=time.time())
        if self.phase is not ReloadPhase.IDLE:
            record.result = "busy"
            record.error = f"a reload is already {self.phase.value}"
            record.finished = time.time()
            self.counts.inc(("busy",))
            log.warning("reload (%s) refused: %s", trigger, record.error)
            return record         # the running reload stays the "last" one
        self.phase = ReloadPhase.LOADING
        try:
            async with asyncio.timeout(self.deadline):
                await self._run(record)
        except asyncio.TimeoutError:
            record.result = "failed"
            record.error = (f"reload did not finish within {self.deadline:g} s "
                            f"(stopped while {self.phase.value})")
            log.error("reload (%s) failed: %s", trigger, record.error)
        except RouterError as exc:
            record.result = "refused"
            record.error = str(exc)
            log.error("reload (%s) refused, still running on the previous configuration: "
                      "%s", trigger, exc)
        except Exception as exc:
            record.result = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            log.exception("reload (%s) failed", trigger)
        finally:
            self.phase = ReloadPhase.IDLE
        record.finished = time.time()
        self.counts.inc((record.result,))
        self.last = record
        if record.result == "ok":
            self.last_ok = record.finished
        return record

    async def _run(self, record: ReloadRecord) -> None:
        node = self.node
        self.phase = ReloadPhase.LOADING
        log.info("reload (%s): reading the configuration", record.trigger)
        old = node.config

        running = tuple(node.checks.scheduler.checks.values()) \
            if node.checks is not None else ()

        def load_and_prepare() -> PreparedReload:
            return prepare(old, self.fingerprint, self.load(), running)

        # The worker thread parses and validates in Python: it shares the GIL with the
        # event loop. A shorter switch interval meanwhile gives the loop the GIL back
        # sooner, so routing keeps its latency while a big configuration loads.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, LOADING_SWITCH_INTERVAL))
        try:
            for _ in range(3):
                contexts = node.server_context
                prepared = await asyncio.to_thread(load_and_prepare)
                if node.server_context is contexts:
                    break
                # Our certificate was renewed (or the contexts rebuilt) while the files
                # were read: these contexts may hold the old certificate, and installing
                # them served it again while due() read the new file and never renewed
                # again (review). Read the files once more.
                log.info("reload (%s): the TLS contexts changed while loading; reading "
                         "the configuration again", record.trigger)
        finally:
            sys.setswitchinterval(switch)
        if node.config is not old:
            raise _refusal("the configuration changed while the reload was loading")
        self.phase = ReloadPhase.APPLYING
        diff = prepared.diff
        record.changes = diff.summary()
        record.restart_required = list(diff.restart_required)
        started = time.perf_counter()
        record.sessions_closed = apply_to_node(node, prepared)
        applied = time.perf_counter() - started
        self.fingerprint = prepared.fingerprint
        # Hooks first: a synchronous hook runs in the same loop step as the swap (config
        # sync gives the new object table its hosts before any message is routed).
        failed = await self.hooks.run(prepared.config, diff)
        if self.apply_service is not None:
            await self.apply_service(prepared)
        if diff.restart_required:
            log.warning("reload (%s): changed but only applied after a restart: %s",
                        record.trigger, ", ".join(diff.restart_required))
        for advice in advisories(prepared.config):
            log.warning("reload (%s): %s", record.trigger, advice)
        if failed:
            record.result = "failed"
            record.error = f"reload hooks failed: {', '.join(failed)}"
            log.error("reload (%s): configuration applied, but %s", record.trigger,
                      record.error)
            return
        record.result = "ok"
        log.info("reload (%s) applied in %.1f ms (%d sessions closed, %d kept): %s",
                 record.trigger, applied * 1000, len(record.sessions_closed),
                 len(node.connections) - len(record.sessions_closed), diff.describe())

    # -- what the status listener shows

    async def http_action(self, query: dict[str, str]) -> Response:
        """``POST /v1/actions/reload``: 200 with the record when applied, 409 when
        refused or busy, 500 when it failed."""
        record = await self.reload("api")
        status = {"ok": 200, "refused": 409, "busy": 409}.get(record.result, 500)
        return json_response(record.as_json(), status=status, query=query)

    def status(self) -> dict[str, Any]:
        return {"phase": self.phase.value,
                "last": self.last.as_json() if self.last is not None else None,
                "last_ok": self.last_ok,
                "counts": {result: int(self.counts.get((result,))) for result in RELOAD_RESULTS},
                "hooks": list(self.hooks.names())}

    def metric_families(self) -> list[MetricFamily]:
        fam = self.counts.to_family("router_reloads_total")
        present = {key[0] for key, _ in self.counts.items()}
        fam.samples += [({"result": r}, 0) for r in RELOAD_RESULTS if r not in present]
        rebuilds = self.tls_rebuilds.to_family("router_tls_context_rebuilds_total")
        present = {key[0] for key, _ in self.tls_rebuilds.items()}
        rebuilds.samples += [({"result": r}, 0) for r in ("ok", "failed") if r not in present]
        return [fam, rebuilds]


def status_routes(routes: dict[str, Route], reloader: Reloader,
                  node_families: Callable[[], list[MetricFamily]]) -> dict[str, Route]:
    """The status listener's routes with the reload's state added: ``/v1/reload`` (the
    state machine and the last reload), a ``reload`` section in the full ``/v1/status``
    document, and ``router_reloads_total`` on ``/metrics``."""
    routes = dict(routes)
    status = routes.get("/v1/status")
    if status is not None and not isinstance(status, WithHeaders):
        plain = status

        def status_with_reload(query: dict[str, str]) -> Response:
            code, ctype, body = plain(query)
            if code != 200 or query.get("sections"):
                return code, ctype, body
            doc = orjson.loads(body)
            doc["reload"] = reloader.status()
            return json_response(doc, query=query)

        routes["/v1/status"] = status_with_reload
    routes["/v1/reload"] = lambda query: json_response(reloader.status(), query=query)
    routes["/metrics"] = metrics_route(lambda: node_families() + reloader.metric_families())
    return routes
