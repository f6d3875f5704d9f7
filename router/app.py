"""Process-level wiring: listener, dialler, status server, signals, graceful shutdown.

``RouterService`` can run inside any event loop (the tests start several in one process);
``serve()`` is what ``router serve`` calls: it installs uvloop, raises the open-file limit,
and turns SIGTERM/SIGINT into a drain-then-close shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Callable

from router import __version__
from router.node import enrollment, report
from router.config import RouterConfig, advisories
from router.transport.connector import Backoff, Connector
from router.transport.listener import Listener
from router.transport.lobby import Lobby
from router.node import Node, describe_topology, name_list
from router.node.filemodes import check_key_modes, ensure_private_dirs
from router.ops.http import StatusServer
from router.ops.sdnotify import SystemdNotifier
from router.node.consoleweb import Console, create_local_token
from router.node.reload import PreparedReload, ReloadHooks, Reloader, ReloadRecord, status_routes
from router.config import load_config
from router.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from checkers.messages import CheckOutcome
    from router.node.learned import LearnedHostsStore

log = logging.getLogger("router.app")


async def _record_json(record: Awaitable[ReloadRecord]) -> dict[str, Any]:
    """A reload's record as the console's reload action answers it."""
    return (await record).as_json()


class RouterService:
    """One running node with its sockets."""

    def __init__(self, config: RouterConfig, *,
                 config_source: Callable[[], RouterConfig] | None = None,
                 **node_kwargs: Any) -> None:
        self.config = config
        #: Reads the configuration again for a reload (``router serve`` passes one that
        #: repeats its command-line options); by default the file ``config.path``.
        self.config_source = config_source
        #: Components that react to a reload register here (``register_component``).
        self.reload_hooks = ReloadHooks()
        self.reloader: Reloader | None = None
        self._node_kwargs = node_kwargs
        self.node: Node | None = None
        self.server: Listener | None = None
        self.status: StatusServer | None = None
        #: The web console on the status listener (router.node.consoleweb).
        self.console: Console | None = None
        self.connector: Connector | None = None
        self.pool: Any = None
        self._socket_dir = ""
        self._stopped = asyncio.Event()
        #: Learned host owners on disk (``[objects] unknown = "learn"`` only).
        self.learned: LearnedHostsStore | None = None

    @property
    def listen_port(self) -> int | None:
        if self.server is None or not self.server.sockets:
            return None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    @property
    def status_port(self) -> int | None:
        return self.status.port if self.status is not None else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        # Private state stays private whatever the umask; keys others can read stop us
        # (issue 16 S5).
        ensure_private_dirs(config.node.data_dir)
        check_key_modes(config.tls.key,
                        os.path.join(config.node.data_dir, "ca", "ca.key"))
        node_kwargs = dict(self._node_kwargs)
        enrollment.finish_key_rotation(config.tls)   # a key swap a crash interrupted
        if "server_context" not in node_kwargs and enrollment.is_enrolling(config.tls):
            # a self-signed certificate and a ticket: we start and ask our parent
            # (router serve --ticket, docs/pki.md)
            node_kwargs["server_context"], node_kwargs["client_context"] = \
                enrollment.enrolling_contexts(config.tls)
            log.info("%s is self-signed and a ticket is stored: asking our parent zone to "
                     "sign it", config.tls.cert)
        node = self.node = Node(config, loop, **node_kwargs)
        node.start()
        self.reloader = Reloader(node, self._read_config, apply_service=self._apply_reload,
                                 hooks=self.reload_hooks)
        # Before any socket opens: a peer that connects must find its log to replay.
        self._open_replay_log(node)
        if config.writers:
            await self._start_writers(node)   # before any socket: no result goes unwritten
        if config.node.accept_config or config.node.zones_dir is not None:
            self._start_configsync(node)  # before any socket: children get zones on connect
        # Before any socket opens too: results for hosts our parent created at runtime
        # are routed even while it is unreachable.
        from router.node.runtime import RuntimeObjects
        node.runtime = RuntimeObjects.open(node.objects, config.node.data_dir)
        node.runtime.start()
        if config.objects.unknown == "learn":
            # Before any socket opens too: learned owners keep their hosts (issue 16 S1).
            from router.node.learned import LearnedHostsStore
            self.learned = LearnedHostsStore.open(node.objects, config.node.data_dir)
            self.learned.start()
        if config.listen is not None:
            host, port = config.listen
            self.server = Listener(loop, node.new_inbound, ratelog=node.ratelog, backlog=4096,
                                   budget=node.turn_budget)
            self.server.lobby = Lobby(node, self.server.hand_over,
                                      lambda: node.config.timeouts.handshake)
            await self.server.start(host, port)
            node.listener = self.server
        if config.status_listen is not None:
            reloader = self.reloader
            console = self.console = Console(
                node, reload_status=reloader.status,
                reload=lambda trigger: _record_json(reloader.reload(trigger)),
                local_token=create_local_token(config.node.data_dir))
            self.status = StatusServer(
                {**status_routes(report.routes(node, lambda: (self.status_port,
                                                              self.listen_port)),
                                 self.reloader, lambda: report.metric_families(node)
                                 + console.metric_families()
                                 + (self.status.metric_families() if self.status else [])),
                 **console.routes()},
                actions={"/v1/actions/reload": console.guard("reload",
                                                             self.reloader.http_action),
                         **console.actions()},
                header_timeout=config.timeouts.status_header,
                max_clients=config.limits.status_max_clients)
            await self.status.start(*config.status_listen)
            console.start()
        local_checks = [c for c in config.checks
                        if not c.command_endpoint or c.command_endpoint == node.name]
        if config.node.accept_commands or local_checks:
            await self._start_executors(node)
        if config.checks:
            self._start_checks(node)
        timeouts = config.timeouts
        self.connector = Connector(
            node, node.topology.dial_targets(),
            backoff=Backoff(timeouts.reconnect_min, timeouts.reconnect_max),
            concurrency=config.limits.dial_concurrency, connect_timeout=timeouts.connect)
        node.connector = self.connector
        self.connector.start()
        log.info("router %s: %s", __version__, describe_topology(node.topology))
        for advice in advisories(config):
            log.warning("configuration: %s", advice)
        if self.server is not None:
            log.info("cluster listener on %s:%s", config.listen[0], self.listen_port)  # type: ignore[index]
        else:
            log.info("no cluster listener (outbound-only node)")
        if self.status is not None:
            log.info("status: http://%s:%s/v1/status  metrics: http://%s:%s/metrics  "
                     "console: http://%s:%s/",
                     config.status_listen[0], self.status_port,  # type: ignore[index]
                     config.status_listen[0], self.status_port,  # type: ignore[index]
                     config.status_listen[0], self.status_port)  # type: ignore[index]

    # ------------------------------------------------------------------ reload

    async def reload(self, trigger: str = "api") -> ReloadRecord:
        """Apply the configuration as it is now on disk; see ``router.node.reload``."""
        if self.reloader is None:
            raise RuntimeError("the service is not running")
        return await self.reloader.reload(trigger)

    def _read_config(self) -> RouterConfig:
        """The reload's configuration source (runs in a worker thread)."""
        if self.config_source is not None:
            return self.config_source()
        if self.config.path is None:
            raise ConfigError("nothing to reload: the node was not started from a "
                              "configuration file")
        return load_config(self.config.path)

    async def _apply_reload(self, prepared: PreparedReload) -> None:
        """The service's part of a reload, after the node's and the hooks': the dialler
        and the store that saves the node's learned hosts."""
        node = self.node
        assert node is not None
        config = self.config = prepared.config
        if self.learned is not None:
            self.learned.objects = node.objects
        if node.writers is not None:
            node.writers.reconfigure(config)
        elif config.writers:
            await self._start_writers(node)
        if self.status is not None:
            # Read per connection: new clients get the new limits (a reload reported
            # them applied while the start's values stayed; review).
            self.status.header_timeout = config.timeouts.status_header
            self.status.max_clients = config.limits.status_max_clients
        old = self.connector
        timeouts, limits = config.timeouts, config.limits
        targets = node.topology.dial_targets()
        backoff = Backoff(timeouts.reconnect_min, timeouts.reconnect_max)
        if old is not None and (old.targets != targets or old.backoff != backoff
                                or old.connect_timeout != timeouts.connect
                                or "dial_concurrency" in prepared.diff.limits):
            # In-flight dials restart; established sessions are not the dialler's.
            await old.stop()
            new = Connector(node, targets, backoff=backoff,
                            concurrency=limits.dial_concurrency,
                            connect_timeout=timeouts.connect)
            new.attempts.update(old.attempts)
            new.failures.update(old.failures)
            self.connector = node.connector = new
            new.start()

    async def _start_writers(self, node: Node) -> None:
        """Result writers (docs/writers.md): durable queues and their own process."""
        from router.features.writers import WritersService
        writers = WritersService(self.config, lambda: node.connected_names)
        await writers.start()
        node.writers = writers
        log.info("result writers: %s", ", ".join(f"{w.name} ({w.type})"
                                                 for w in self.config.writers))

    def _start_configsync(self, node: Node) -> None:
        """Config sync (docs/config-sync.md): zones under DATA_DIR/api/zones, relayed."""
        from router.features.configsync import ConfigSync

        cfg = self.config
        sync = ConfigSync(node, api_dir=os.path.join(cfg.node.data_dir, "api"),
                          accept_config=cfg.node.accept_config, zones_dir=cfg.node.zones_dir,
                          max_update_bytes=cfg.limits.max_config_update_bytes,
                          on_hosts=lambda hosts: node.objects.replace_config_hosts(hosts))
        sync.start()
        node.configsync = sync
        self.reload_hooks.register("configsync", sync.on_reload)

    def _open_replay_log(self, node: Node) -> None:
        """The LMDB replay log under DATA_DIR/replaylog (store-and-forward)."""
        from replaylog import ReplayWriter
        from router.node.replay import ReplayManager

        path = os.path.join(self.config.node.data_dir, "replaylog")
        node.replay = ReplayManager(node, ReplayWriter.open(path))
        if node.replay.zones:
            log.info("replay log %s for %d zones: %s", path, len(node.replay.zones),
                     name_list(sorted(node.replay.zones)))

    def _catalog(self) -> Any:
        from checkers.catalog import Catalog

        return Catalog.load_merged(self.config.node.command_catalog)

    def _start_checks(self, node: Node) -> None:
        from router.features.checks import LocalChecks
        from router.features.scheduler import Scheduler

        topology = node.topology
        zone = topology.zone(topology.local_zone)
        scheduler = Scheduler(self.config.checks, local_endpoint=node.name,
                              zone_endpoints=zone.endpoints if zone else (node.name,),
                              started=time.time(),
                              cold_start=self.config.timeouts.ha_cold_start)
        node.checks = LocalChecks(node, scheduler, self.pool, self._catalog(),
                                  builtins=builtin_checks(node))
        node.checks.start()

        def zone_members(config: object, diff: object = None) -> None:
            # Membership is applied live: without this the scheduler kept the old members
            # and two nodes ran the same checks until a restart (review).
            new = node.topology.zone(node.topology.local_zone)
            scheduler.zone_endpoints = tuple(new.endpoints) if new else (node.name,)
        self.reload_hooks.register("checks", zone_members)
        log.info("scheduling %d checks", len(scheduler))

    async def _start_executors(self, node: Node) -> None:
        """Check executors for command_endpoint checks (separate processes, Unix socket)."""
        from checkers.pool import CheckerPool
        from router.features.commands import CommandExecutor

        # A short private directory: Unix socket paths are limited to about 100 bytes.
        self._socket_dir = tempfile.mkdtemp(prefix="router-checkers-")
        self.pool = CheckerPool(self._socket_dir)
        await self.pool.start()
        if self.config.node.accept_commands:
            node.executor = CommandExecutor(node.name, self.pool, self._catalog())
        log.info("%d check executors started%s", self.pool.workers,
                 " (accepting commands)" if node.executor is not None else "")

    async def stop(self, drain_timeout: float | None = None) -> bool:
        """Stop accepting, stop dialling, flush queues (bounded), close every session."""
        node = self.node
        if node is None or self._stopped.is_set():
            return True
        timeout = self.config.timeouts.drain if drain_timeout is None else drain_timeout
        started = time.monotonic()
        if self.console is not None:
            self.console.stop()         # before the replay log closes: it reads it
        if self.server is not None:
            self.server.close()
        if self.connector is not None:
            await self.connector.stop()
        if node.checks is not None:
            await node.checks.stop()
        drained = await node.drain(timeout)
        node.close_all("node is shutting down")
        node.stop_housekeeping()
        # Give transports a moment to send close_notify and FIN.
        deadline = time.monotonic() + 2.0
        while node.all_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(node.all_connections):
            conn.abort("shutdown deadline")
        if node.replay is not None:
            # Last: closing sessions hand the log their unsent frames; close() flushes.
            await node.replay.close(timeout=10.0)
        if self.learned is not None:
            await self.learned.close()
        if node.runtime is not None:
            await node.runtime.close()
        if node.writers is not None:
            await node.writers.stop()
        if self.server is not None:
            await self.server.wait_closed()
        if self.status is not None:
            await self.status.close()
        if self.pool is not None:
            await self.pool.close(drain_timeout=min(timeout, 5.0))
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._stopped.set()
        log.info("stopped in %.2f s (%s)", time.monotonic() - started,
                 "all queues flushed" if drained else
                 "drain timed out; unsent logged messages were kept in the replay log")
        return drained


def builtin_checks(node: Node) -> Callable[[str, Mapping[str, Any]], CheckOutcome | None]:
    """Icinga's built-in ``cluster`` and ``cluster-zone`` commands for ``[[checks]]``.

    They read the node's own status (the document ``router check`` reads over HTTP), so a
    master checks its satellites' zones like Icinga's master does, without a plugin. The
    outcome is handed to the scheduler like a plugin's; other commands give None and go
    to the catalog and the executors.
    """
    from checkers.messages import CheckOutcome
    from router.ops import health

    def run(command: str, macros: Mapping[str, Any]) -> CheckOutcome | None:
        outcome = health.builtin_command(
            command, macros, lambda: report.status_document(
                node, sections=("node", "zones", "endpoints")))
        if outcome is None:
            return None
        now = time.time()
        return CheckOutcome(outcome.state, outcome.state, outcome.output,
                            [perf.format() for perf in outcome.perfdata], now, now,
                            command=command)

    return run


def check_nofile_limit(max_connections: int, soft: int) -> bool:
    """Say at start when RLIMIT_NOFILE cannot hold ``limits.max_connections`` peers plus
    the descriptors the node keeps for itself (``FD_RESERVE``): beyond the limit inbound
    connections are refused (counted as ``out_of_fds``), never crash the node. True when
    the limit is enough."""
    from router.node.sessions import FD_RESERVE
    need = max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= need:
        return True
    log.warning("RLIMIT_NOFILE is %d after raising it to the hard limit, but "
              "limits.max_connections = %d needs %d file descriptors (%d for the node "
              "itself): connections beyond about %d will be refused. Raise LimitNOFILE= in "
              "the systemd unit or ulimit -n, or lower limits.max_connections", soft,
              max_connections, need, FD_RESERVE, max(0, soft - FD_RESERVE))
    return False


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit: every peer is a file descriptor (P12)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def reserve_fd_table(count: int) -> bool:
    """Size the kernel's descriptor table for ``count`` descriptors now, at start.

    The table grows by doubling as descriptors are opened (1 024, 2 048, ... entries),
    and in a process with threads every doubling waits for an RCU grace period inside
    the call that opened the descriptor. Under a flood of 10 000 connections that was
    ``accept()`` holding the event loop 10-17 ms, once per doubling (issue 21: measured
    per call; it went away with this). One ``dup2`` to the highest number the node will
    use pays for it once, before the loop and its threads start. The kernel keeps
    ~8 bytes per entry (about 160 KB for 20 000) and never shrinks the table. False when
    it could not (the number is in use, or the limit is lower): no harm, only the stalls.
    """
    if count <= 3:
        return False
    top = count - 1
    try:
        os.fstat(top)
        return False                    # in use (inherited?): never clobber it
    except OSError:
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.dup2(fd, top, inheritable=False)
        os.close(top)
        return True
    except OSError as exc:
        log.debug("could not size the descriptor table for %d: %s", count, exc)
        return False
    finally:
        os.close(fd)


#: Young-generation threshold of the cyclic garbage collector while serving (default 700).
GC_THRESHOLD0 = 5000
#: Young collections between two middle-generation ones (default 10).
GC_THRESHOLD1 = 2


def tune_gc() -> None:
    """Freeze the start-up objects out of the cyclic GC and collect less often.

    The configuration and topology (tens of thousands of objects on a master with 5 000
    agent zones) live as long as the process, yet every full collection walks them again;
    and with a threshold of 700 allocations a node that parses 5 000 messages a second
    runs a collection every few hundred microseconds. Measured with `router perf
    --endpoints 1000 --scenario steady,max --duration 5 --warmup 1`: the collector took
    0.42 s of 17.2 s CPU in 1 826 collections before, 0.12 s of 16.8 s in 86 collections
    (1.4 ms each) after. Reference counting still frees everything that is not in a
    cycle, frozen or not.

    The middle generation holds what survived the young collections since its last
    run: when connections arrive by the thousand (a storm, a flood) nearly everything
    survives, and with the default of 10 young collections per middle one it grew to
    ~50 000 objects and took 8-12 ms in one go, twice per 10 000 connections (issue 21,
    ``perf/bench_floods.py``). Every 2 young collections it stays under ~4 ms; in the
    run above the collector's total time did not change (90 ms either way).
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD0, GC_THRESHOLD1, gc.get_threshold()[2])


async def _serve(config: RouterConfig, ready_message: str | None,
                 config_source: Callable[[], RouterConfig] | None = None) -> int:
    service = RouterService(config, config_source=config_source)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[ReloadRecord]] = set()
    #: Type=notify under systemd: readiness, reload and stop states, watchdog pings.
    systemd = SystemdNotifier.from_environ()

    async def sighup_reload() -> ReloadRecord:
        if systemd is not None:
            systemd.reloading()
        record = await service.reload("SIGHUP")
        if systemd is not None:
            systemd.ready(f"reload {record.result}: {record.error or 'applied'}")
        return record

    def on_sighup() -> None:
        task = loop.create_task(sighup_reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # A SIGHUP during start (a logrotate racing a restart) killed the process, SIGHUP's
    # default action (review): held until the node is up, then one reload runs.
    held: list[bool] = []
    loop.add_signal_handler(signal.SIGHUP, lambda: held.append(True))
    await service.start()
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if held:
        log.info("SIGHUP received while starting: reloading now")
        on_sighup()
    tune_gc()
    if ready_message:
        print(ready_message.format(status_port=service.status_port,
                                   listen_port=service.listen_port), flush=True)
    if systemd is not None:
        systemd.ready(f"serving as {config.node.name}; cluster port {service.listen_port}, "
                      f"status port {service.status_port}")
        systemd.start_watchdog(loop)
    await stop.wait()
    log.info("signal received: draining queues (up to %g s) and closing sessions",
             config.timeouts.drain)
    if systemd is not None:
        systemd.stopping()
    await service.stop()
    if systemd is not None:
        systemd.close()
    return 0


def serve(config: RouterConfig, ready_message: str | None = None,
          config_source: Callable[[], RouterConfig] | None = None) -> int:
    """Run a node until SIGTERM/SIGINT, reloading on SIGHUP; the exit code for the CLI.

    ``config_source`` reads the configuration again for a reload (default: the file
    ``config.path``)."""
    import uvloop

    soft = raise_nofile_limit()
    check_nofile_limit(config.limits.max_connections, soft)
    from router.node.sessions import FD_RESERVE
    reserve_fd_table(min(soft, config.limits.max_connections + FD_RESERVE))
    return uvloop.run(_serve(config, ready_message, config_source))
