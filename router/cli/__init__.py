"""The ``router`` command line (click)."""

from __future__ import annotations

import logging
import socket
import sys
import time
from pathlib import Path

import click
import orjson

from checkers.errors import CheckerError
from replaylog.errors import ReplayLogError
from router.errors import RouterError

#: What a command reports as a one-line error instead of a traceback: the roots of the
#: router's, the check executors' and the replay log's exception trees (the lower two do
#: not import ``router``, so they have roots of their own).
OPERATOR_ERRORS = (RouterError, CheckerError, ReplayLogError)

DEFAULT_DATA_DIR = "router-data"


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class LogFormatter(logging.Formatter):
    """The stdlib formatter, with the date and time text made once per second.

    A storm logs a line per connecting endpoint (5 000 in a few seconds). With this and
    the lookups :func:`_setup_logging` turns off, a record costs 6.7 instead of 9.9 us
    (``time.strftime`` alone was 1.2 us of it). Output is unchanged.
    """

    _second: int | None = None
    _second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format,
                                              self.converter(second))
            self._second = second
        return self.default_msec_format % (self._second_text, record.msecs)


def _setup_logging(level: str) -> None:
    # Nothing we print needs the caller's file and line, the thread or the process:
    # skip looking them up for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(LOG_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])


@click.group()
@click.version_option(package_name="router")
def main() -> None:
    """Cluster message router speaking the Icinga 2 cluster protocol."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration file.")
@click.option("--node-name", help="Endpoint name of this node (certificate CN).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Data directory; certificates are read from DIR/certs/ "
                   "(ca.crt, NAME.crt, NAME.key).")
@click.option("--zones", "zones_file", type=click.Path(dir_okay=False),
              help="Zones and endpoints: our TOML or an Icinga zones.conf.")
@click.option("--listen", help="Cluster listener HOST:PORT, or 'none' for an outbound-only node.")
@click.option("--status-listen", help="Status/metrics HTTP listener HOST:PORT, or 'none'.")
@click.option("--accept-commands/--no-accept-commands", default=None,
              help="Accept event::ExecuteCommand from the parent zone.")
@click.option("--log-level", default=None,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def serve(config_path: str | None, node_name: str | None, data_dir: str | None,
          zones_file: str | None, listen: str | None, status_listen: str | None,
          accept_commands: bool | None, log_level: str | None) -> None:
    """Run one node of a cluster.

    With no options at all, a standalone node named after this host starts from
    ./router-data: its own CA and certificate are created there on first start, it
    listens on 127.0.0.1:5665 and prints where its status page is.
    """
    from router import app, config as config_mod, pki

    try:
        base = config_mod.load_config(config_path) if config_path else None
        created_pki = None
        if base is None:
            node_name = node_name or socket.gethostname().split(".")[0] or "router"
            data_dir = data_dir or DEFAULT_DATA_DIR
            certs = Path(data_dir) / "certs"
            if not (certs / f"{node_name}.crt").exists() or not (certs / "ca.crt").exists():
                created_pki = pki.ensure_node_pki(data_dir, node_name)
        cfg = config_mod.quickstart_config(
            node_name=node_name, data_dir=data_dir, zones_file=zones_file, listen=listen,
            status_listen=status_listen, base=base, accept_commands=accept_commands)
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    _setup_logging(log_level or cfg.log_level)
    if created_pki is not None:
        click.echo(f"created CA and certificate for {cfg.node.name} in {cfg.node.data_dir}",
                   err=True)
    ready = None
    if cfg.status_listen is not None:
        host = cfg.status_listen[0]
        ready = (f"router: node {cfg.node.name} is up; status at "
                 f"http://{host}:{{status_port}}/v1/status (metrics: /metrics, "
                 f"results: /v1/objects/checkresults). Ctrl-C stops it.")
    try:
        sys.exit(app.serve(cfg, ready))
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--socket", "socket_path", required=True,
              help="Unix socket of the router's check pool to connect to.")
@click.option("--max-inflight", type=int, default=None,
              help="Checks this executor runs at once.")
@click.option("--log-level", default="WARNING", show_default=True)
def checker(socket_path: str, max_inflight: int | None, log_level: str) -> None:
    """Run one check-executor process (router serve starts and supervises these)."""
    from checkers import worker

    args = ["--socket", socket_path, "--log-level", log_level]
    if max_inflight is not None:
        args += ["--max-inflight", str(max_inflight)]
    sys.exit(worker.main(args))


@main.group()
def config() -> None:
    """Validate and convert configuration."""


@config.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def config_check(path: str) -> None:
    """Validate a TOML configuration; errors name the line."""
    from router import config as config_mod

    try:
        cfg = config_mod.load_config(path)
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{path}: OK (node {cfg.node.name}, {len(cfg.zones)} zones, "
               f"{len(cfg.endpoints)} endpoints)")


@config.command("import-zones")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--node-name", help="Resolve NodeName in the file to this endpoint name.")
@click.option("--data-dir", help="data_dir for the [node] table (default: Icinga's "
              "/var/lib/icinga2, so existing certificates are used).")
def config_import_zones(path: str, node_name: str | None, data_dir: str | None) -> None:
    """Convert Icinga's zones.conf (Endpoint and Zone objects) to our TOML.

    Skipped objects and attributes are listed as '# warning:' comments in the output.
    """
    from router.config import zonesconf

    text = Path(path).read_text(encoding="utf-8")
    try:
        out = zonesconf.zones_conf_to_toml(text, path, node_name=node_name, data_dir=data_dir)
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(out, nl=False)


@main.command()
@click.option("--url", default="http://127.0.0.1:9665", show_default=True,
              help="Base URL of the node's status listener.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw /v1/status document.")
def status(url: str, as_json: bool) -> None:
    """Show zones, endpoints, connections and rates of a running node."""
    from router.ops import statusview

    try:
        doc = statusview.fetch_status(url)
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(statusview.format_status(doc))


@main.group("replaylog")
def replaylog_group() -> None:
    """Inspect or reset a node's replay log (DATA_DIR/replaylog)."""


def _open_log(data_dir: str):
    from replaylog import ReplayStore

    path = Path(data_dir) / "replaylog"
    if not path.exists():
        raise click.ClickException(f"{path}: no replay log here")
    try:
        return ReplayStore(path, readonly=True)
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@replaylog_group.command("stats")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw statistics.")
def replaylog_stats(data_dir: str, as_json: bool) -> None:
    """Per zone: records, bytes, oldest/newest ts; per endpoint: confirmed position, lag."""
    store = _open_log(data_dir)
    try:
        stats = store.stats()
        positions = store.positions()
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps({"store": stats, "positions": positions},
                                option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{stats['path']}: {stats['records']} records, {stats['bytes']} bytes "
               f"(cap {stats['max_bytes']}), evicted {stats['evicted']}")
    click.echo(f"{'ZONE':24} {'RECORDS':>9} {'BYTES':>12} {'OLDEST TS':>18} {'NEWEST TS':>18}")
    for zone, z in sorted(stats["zones"].items()):
        click.echo(f"{zone:24} {z['records']:>9} {z['bytes']:>12} "
                   f"{z['oldest_ts'] or 0:>18.6f} {z['newest_ts'] or 0:>18.6f}")
    if positions:
        click.echo(f"{'ENDPOINT':24} {'CONFIRMED POSITION':>18}")
        for endpoint, position in sorted(positions.items()):
            click.echo(f"{endpoint:24} {position:>18.6f}")


@replaylog_group.command("dump")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--zone", help="Zone whose log to print.")
@click.option("--peer", help="Endpoint whose log to print (its zone's log; needs --config).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="The node's configuration, to find --peer's zone.")
@click.option("--since", type=float, default=None, help="Only records with ts > SINCE.")
@click.option("--limit", type=int, default=None, help="At most this many records.")
def replaylog_dump(data_dir: str, zone: str | None, peer: str | None,
                   config_path: str | None, since: float | None, limit: int | None) -> None:
    """Print the logged messages waiting for a zone (or a peer) as JSON lines, oldest first.

    Logs are kept per zone: every endpoint of a zone is replayed from the same log.
    """
    if (zone is None) == (peer is None):
        raise click.UsageError("give exactly one of --zone and --peer")
    if peer is not None:
        if config_path is None:
            raise click.UsageError("--peer needs --config to find the peer's zone")
        from router import config as config_mod

        try:
            cfg = config_mod.load_config(config_path)
        except OPERATOR_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc
        zone = next((z.name for z in cfg.zones if peer in z.endpoints), None)
        if zone is None:
            raise click.ClickException(f"endpoint {peer!r} is in no zone of {config_path}")
    assert zone is not None
    store = _open_log(data_dir)
    try:
        shown = 0
        for record in store.iter_from(zone, since if since is not None else float("-inf")):
            payload = record.frame[record.frame.index(b":") + 1:-1]
            click.echo(orjson.dumps({"seq": record.seq, "ts": record.ts,
                                     "object_zone": record.object_zone,
                                     "message": orjson.loads(payload)}).decode())
            shown += 1
            if limit is not None and shown >= limit:
                break
    finally:
        store.close()


@replaylog_group.command("reset")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
def replaylog_reset(data_dir: str) -> None:
    """Move a broken replay log aside and start an empty one (the node must be stopped)."""
    from replaylog.store import reset

    try:
        moved = reset(Path(data_dir) / "replaylog")
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"moved the old log to {moved}" if moved else "no log to move; created an "
               "empty one")


@main.group("pki")
def pki_group() -> None:
    """Create a CA and node certificates (Icinga's on-disk layout)."""


@pki_group.command("new-ca")
@click.argument("directory", type=click.Path(file_okay=False))
def pki_new_ca(directory: str) -> None:
    """Create ca.crt and ca.key in DIRECTORY."""
    from router import pki

    if (Path(directory) / "ca.key").exists():
        raise click.ClickException(f"{directory}/ca.key exists; not overwriting a CA")
    cert, key = pki.create_ca(directory)
    click.echo(f"{cert}\n{key}")


@pki_group.command("issue")
@click.argument("node_name")
@click.option("--ca-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory holding ca.crt and ca.key.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where NAME.crt, NAME.key and ca.crt are written (e.g. DATA/certs).")
def pki_issue(node_name: str, ca_dir: str, out_dir: str) -> None:
    """Issue a certificate for NODE_NAME signed by the CA in --ca-dir."""
    from router import pki

    cert, key = pki.issue_node_files(ca_dir, out_dir, node_name)
    click.echo(f"{cert}\n{key}")


@pki_group.command("ticket")
@click.option("--cn", required=True, help="Common name of the node.")
@click.option("--salt", required=True, help="The parent's TicketSalt.")
def pki_ticket(cn: str, salt: str) -> None:
    """Print the Icinga-compatible enrollment ticket for CN."""
    from router import pki

    click.echo(pki.ticket(cn, salt))


@main.command()
@click.option("--endpoints", type=click.IntRange(1, 20000), default=5000, show_default=True,
              help="Emulated agents (one TLS session and certificate each).")
@click.option("--rate", default="5000", show_default=True,
              help="Results/s in total for steady/churn/replay, or 'max' (flat out).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True,
              help="Measurement window per load scenario, s.")
@click.option("--warmup", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Warm-up, s.")
@click.option("--payload-bytes", type=click.IntRange(min=0, max=16 * 1024 * 1024),
              default=1024, show_default=True,
              help="Size of one CheckResult message (JSON; at least the size of the "
                   "unpadded message, about 700 bytes).")
@click.option("--scenario", "scenario", default="steady", show_default=True,
              help="steady|max|storm|churn|replay|all, or several separated by commas; "
                   "run in turn on the connected agents ('all': every scenario).")
@click.option("--target", metavar="HOST:PORT",
              help="An existing node instead of the local demo topology (needs --pki).")
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False),
              help="With --target: CA directory (ca.crt, ca.key) to issue the agents' "
                   "and master's certificates.")
@click.option("--status-url", help="With --target: our router's status URL, to count "
                                   "connected endpoints on the node itself.")
@click.option("--against", type=click.Choice(["icinga2"]),
              help="Also run the same workload against a real Icinga 2 node, same run.")
@click.option("--workers", type=click.IntRange(min=0), default=0,
              help="Load processes (default: one per core).")
@click.option("--replay-cut", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True,
              help="replay: how long the parent is cut off, s.")
@click.option("--churn-fraction", type=click.FloatRange(min=0, max=1, min_open=True),
              default=0.1, show_default=True,
              help="churn: fraction of the agents that keep reconnecting.")
@click.option("--connect-timeout", type=click.FloatRange(min=0), default=0.0,
              help="Bound for connecting all agents, s (default: max(60, N/20)).")
@click.option("--drain", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True,
              help="After each load phase, wait up to this long for results still on "
                   "their way before counting any as missing, s (flat out with many "
                   "agents, their socket buffers hold a large backlog).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write every number as JSON.")
@click.option("--router-toml", type=click.Path(dir_okay=False, exists=True),
              help="TOML appended to the demo router's configuration (for example a "
                   "[limits] table), to measure a setting.")
@click.option("--key-type", type=click.Choice(["ec", "rsa", "rsa4096"]), default="ec",
              show_default=True,
              help="Keys of the CA, the nodes and the agents: EC P-256, RSA 2048, or RSA "
                   "4096 (what an Icinga CA and 'icinga2 pki new-cert' make; every handshake "
                   "then signs with it).")
@click.option("--keep", is_flag=True, help="Keep the temporary directory.")
def perf(endpoints: int, rate: str, duration: float, warmup: float, payload_bytes: int,
         scenario: str, target: str | None, pki_dir: str | None, status_url: str | None,
         against: str | None, workers: int, replay_cut: float, churn_fraction: float,
         connect_timeout: float, drain: float, json_path: str | None,
         router_toml: str | None, key_type: str, keep: bool) -> None:
    """Load-test a node: N emulated agents -> node -> emulated parent.

    Without --target it starts a local demo topology (our router satellite between the
    agents and the parent) on 127.0.0.1. See perf/README.md.
    """
    try:
        from perf import tool
    except ImportError as exc:       # installed without the perf package
        raise click.ClickException(f"the perf package is not available: {exc}") from exc
    try:
        parsed_rate = None if rate.strip().lower() == "max" else float(rate)
    except ValueError as exc:
        raise click.BadParameter("a number or 'max'", param_hint="--rate") from exc
    if parsed_rate is not None and parsed_rate <= 0:
        raise click.BadParameter("must be > 0", param_hint="--rate")
    if against == "icinga2":
        from perf.icinga import find_icinga2
        if find_icinga2() is None:
            raise click.ClickException("--against icinga2: icinga2 is not installed")
    scenarios = tool.SCENARIOS if scenario == "all" else tuple(
        x.strip() for x in scenario.split(",") if x.strip())
    bad = [x for x in scenarios if x not in tool.SCENARIOS]
    if bad or not scenarios:
        raise click.BadParameter(f"unknown scenario {', '.join(bad) or scenario!r}; choose "
                                 f"from {', '.join(tool.SCENARIOS)} or all",
                                 param_hint="--scenario")
    opts = tool.Options(
        endpoints=endpoints, rate=parsed_rate, duration=duration, warmup=warmup,
        payload_bytes=payload_bytes, scenarios=scenarios, target=target, pki_dir=pki_dir,
        status_url=status_url, against=against, workers=workers, replay_cut=replay_cut,
        churn_fraction=churn_fraction, connect_timeout=connect_timeout, drain=drain,
        json_path=json_path,
        keep=keep, router_toml=Path(router_toml).read_text() if router_toml else "",
        key_type=key_type)
    try:
        result = tool.run(opts, echo=lambda s: click.echo(s, err=True))
    except (ValueError, RuntimeError, TimeoutError, *OPERATOR_ERRORS) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(tool.format_report(result))
    died = [s["target"] for s in result["sessions"] if s.get("node_died")]
    if died:
        raise click.ClickException(f"the node under test stopped during the run: "
                                   f"{', '.join(died)} (see the warnings above)")


if __name__ == "__main__":  # pragma: no cover
    main()
