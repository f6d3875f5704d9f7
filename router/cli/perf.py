"""``router perf``: the load test (the ``perf`` package), for a demo topology or a node.

The only module of the router that imports ``perf``, and only inside the command: the
router runs without it.
"""

from __future__ import annotations

from pathlib import Path

import click

from router.cli.common import OPERATOR_ERRORS

__all__ = ["perf"]


@click.command()
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
              help="steady|max|storm|stormload|churn|replay|soak|all, or several separated by "
                   "commas; run in turn on the connected agents ('all': every scenario). "
                   "soak: --duration of mixed traffic, a row a minute (perf/soak.py).")
@click.option("--target", metavar="HOST:PORT",
              help="An existing node instead of the local demo topology (needs --pki).")
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False),
              help="With --target: CA directory (ca.crt, ca.key) to issue the agents' "
                   "and master's certificates.")
@click.option("--status-url", help="With --target: our router's status URL, to count "
                                   "connected endpoints on the node itself.")
@click.option("--against", metavar="icinga2|floor|icinga2,floor",
              help="Also run the same workload, same run, against a real Icinga 2 node "
                   "(icinga2) and/or the count-only floor (floor: a uvloop TLS server that "
                   "only counts frames).")
@click.option("--topology", type=click.Choice(["direct", "chain"]), default="direct",
              show_default=True,
              help="chain: agents -> our satellite -> our master (two router processes); "
                   "results counted after the master.")
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
@click.option("--py-spy", "py_spy", metavar="DIR", type=click.Path(file_okay=False),
              help="Record our node(s) with py-spy during each load window: one flame "
                   "graph (SVG) per node and scenario in DIR (pip install '.[perf]').")
def perf(endpoints: int, rate: str, duration: float, warmup: float, payload_bytes: int,
         scenario: str, target: str | None, pki_dir: str | None, status_url: str | None,
         against: str | None, topology: str, workers: int, replay_cut: float,
         churn_fraction: float,
         connect_timeout: float, drain: float, json_path: str | None,
         router_toml: str | None, key_type: str, keep: bool, py_spy: str | None) -> None:
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
    againsts = [a.strip() for a in (against or "").split(",") if a.strip()]
    if any(a not in ("icinga2", "floor") for a in againsts):
        raise click.BadParameter("icinga2, floor or both (comma-separated)",
                                 param_hint="--against")
    if "icinga2" in againsts:
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
        status_url=status_url, against=",".join(againsts) or None, topology=topology,
        workers=workers, replay_cut=replay_cut,
        churn_fraction=churn_fraction, connect_timeout=connect_timeout, drain=drain,
        json_path=json_path,
        keep=keep, router_toml=Path(router_toml).read_text() if router_toml else "",
        key_type=key_type, py_spy=py_spy)
    try:
        result = tool.run(opts, echo=lambda s: click.echo(s, err=True))
    except (ValueError, RuntimeError, TimeoutError, *OPERATOR_ERRORS) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(tool.format_report(result))
    died = [s["target"] for s in result["sessions"] if s.get("node_died")]
    if died:
        raise click.ClickException(f"the node under test stopped during the run: "
                                   f"{', '.join(died)} (see the warnings above)")

