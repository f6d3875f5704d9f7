"""The node under test: our router (:class:`RouterTarget`), a real Icinga 2
(:class:`IcingaTarget`) or an existing node (:class:`ExternalTarget`), and what the
node itself reports (:func:`node_connected`, :func:`node_counters`).
"""

from __future__ import annotations

import collections
import ctypes
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import IO, Any

#: The repository checkout (our router runs from there; ``version()`` asks its git).
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import orjson
import psutil

from perf.benchpki import BenchPKI
from perf.measure import free_port
from perf.tomlconf import dump_toml, merge_toml
from perf.wire import MASTER, SAT, SERVICE, agent_name

__all__ = [
    "REPO",
    "ExternalTarget",
    "IcingaTarget",
    "RouterTarget",
    "Target",
    "node_connected",
    "node_counters",
]


class Target:
    name = "?"
    port = 0
    log_path: Path | None = None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def root_pid(self) -> int | None: ...
    def exited(self) -> int | None:
        """The exit code when the node we started has exited (negative: killed by that
        signal); None while it runs, or when we did not start it."""
        return None
    def connected_endpoints(self) -> set[str]:
        raise NotImplementedError
    def version(self) -> str:
        raise NotImplementedError
    def diagnostics(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "".join(collections.deque(open(self.log_path, errors="replace"), maxlen=30))


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


class RouterTarget(Target):
    """``python -m router serve --config FILE`` as a subprocess (own CPU, own GIL)."""

    name = "router"
    log_path: Path                      # always set (Target's is None for an external node)

    def __init__(self, base: Path, bench_pki: BenchPKI, agents: int,
                 extra_toml: str = "", command: str = "") -> None:
        import shlex
        self.command = shlex.split(command) if command else [sys.executable, "-m", "router"]
        self.custom_command = bool(command)
        self.dir = base / "router"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.status_port = free_port()
        self.config_path = self.dir / "router.toml"
        self.log_path = self.dir / "router.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        doc: dict[str, Any] = {
            "log_level": "info",
            "listen": f"127.0.0.1:{self.port}",
            "status_listen": f"127.0.0.1:{self.status_port}",
            "node": {"name": SAT, "data_dir": str(self.dir / "data")},
            "tls": {"ca": str(bench_pki.ca_cert), "cert": str(bench_pki.cert(SAT)),
                    "key": str(bench_pki.key(SAT))},
            "timeouts": {"drain": 2},
            "zones": [{"name": MASTER, "endpoints": [MASTER]},
                      {"name": "satellite", "endpoints": [SAT], "parent": MASTER}]
            + [{"name": agent_name(i), "endpoints": [agent_name(i)], "parent": "satellite"}
               for i in range(agents)],
            "endpoints": [{"name": ep}
                          for ep in [MASTER, SAT] + [agent_name(i) for i in range(agents)]],
        }
        if extra_toml:
            try:
                extra = tomllib.loads(extra_toml.replace("\\n", "\n"))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"TOML for the router's configuration: {exc}") from None
            merge_toml(doc, extra)
        self.config_path.write_text(dump_toml(doc))

    def start(self) -> None:
        (self.dir / "data").mkdir(exist_ok=True)
        self._out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--config", str(self.config_path)],
            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n"
                                   f"{self.diagnostics()}")
            try:
                self._get("/healthz")
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"router did not answer on its status port\n{self.diagnostics()}")

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}{path}",
                                    timeout=5) as resp:
            body: bytes = resp.read()
            return body

    def status(self, query: str = "") -> dict[str, Any]:
        """/v1/status, or the part ``query`` asks for (``sections=connections``): a poller
        must not make the node build 5 000 endpoint entries it does not read."""
        doc: dict[str, Any] = orjson.loads(self._get("/v1/status" + (f"?{query}" if query else "")))
        return doc

    def connected_endpoints(self) -> set[str]:
        return {e["name"] for e in self.status()["endpoints"]
                if e["connected"] and e["name"] != SAT}

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def version(self) -> str:
        from router import __version__
        if self.custom_command:
            return f"router {__version__} via {' '.join(self.command)} (custom build)"
        try:
            head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                    "router"], capture_output=True, text=True,
                                   check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return f"router {__version__}"
        return f"router {__version__} (git {head}{', router/ modified' if dirty else ''})"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not None:
            self._out.close()
            self._out = None


class IcingaTarget(Target):
    """A real Icinga 2 satellite from the interop harness (no CheckerComponent)."""

    name = "icinga"

    def __init__(self, base: Path, bench_pki: BenchPKI, agents: int, severity: str) -> None:
        from perf.icinga import IcingaNode, find_icinga2

        binary = find_icinga2()
        if binary is None:
            raise RuntimeError("icinga2 not found ($ICINGA2_BIN, $PATH, /usr/sbin/icinga2)")
        self.binary = binary

        class BenchIcingaNode(IcingaNode):
            # The harness logs at debug level (one line per message under this load);
            # a benchmark runs the daemon at its usual level instead.
            def render_config(self) -> str:
                return super().render_config().replace(
                    'severity = "debug"', f'severity = "{severity}"')

        objects = []
        zones = [{"name": MASTER, "endpoints": [MASTER]},
                 {"name": "satellite", "endpoints": [SAT], "parent": MASTER}]
        endpoints = [{"name": SAT}, {"name": MASTER}]
        for i in range(agents):
            a = agent_name(i)
            zones.append({"name": a, "endpoints": [a], "parent": "satellite"})
            endpoints.append({"name": a})
            objects.append(
                f'object Host "{a}" {{\n  check_command = "dummy"\n'
                f'  enable_active_checks = false\n  zone = "{a}"\n}}\n'
                f'object Service "{SERVICE}" {{\n  host_name = "{a}"\n'
                f'  check_command = "dummy"\n  enable_active_checks = false\n'
                f'  zone = "{a}"\n}}\n')
        self.port = free_port()
        self.node = BenchIcingaNode(base / "icinga", SAT, "satellite", api_port=self.port,
                                    endpoints=endpoints, zones=zones,
                                    services="\n".join(objects), checker=False,
                                    binary=binary)
        self.node.install_certs(bench_pki.ca_cert, bench_pki.cert(SAT), bench_pki.key(SAT))
        self.log_path = self.node.log_path

    def start(self) -> None:
        self.node.start(timeout=60)

    def connected_endpoints(self) -> set[str]:
        return set(self.node.connected_endpoints())

    def root_pid(self) -> int | None:
        return self.node.pid

    def exited(self) -> int | None:
        return self.node.exit_code()

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                             env=self.node._env(), check=False).stdout
        first = out.splitlines()[0] if out else "icinga2 ?"
        return first.replace("icinga2 - The Icinga 2 network monitoring daemon ", "icinga2 ")

    def stop(self) -> None:
        self.node.stop()

    def diagnostics(self) -> str:
        return self.node.diagnostics(30)


class ExternalTarget(Target):
    """An existing node at HOST:PORT (``--target``); it must know ``master`` and the agents."""

    name = "target"

    def __init__(self, host: str, port: int, status_url: str | None) -> None:
        self.host, self.port, self.status_url = host, port, status_url

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def root_pid(self) -> int | None:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port:
                pid: int | None = conn.pid        # psutil has no types
                return pid
        return None

    def version(self) -> str:
        return f"existing node at {self.host}:{self.port}"


def node_connected(target: Target) -> int | None:
    """Agents the node itself reports connected and identified (None: it cannot tell);
    minus one for the parent."""
    if isinstance(target, RouterTarget):
        return int(target.status("sections=connections")["connections"]["established"]) - 1
    if isinstance(target, IcingaTarget):
        return int(target.node.api_listener_status().get("num_conn_endpoints", 0)) - 1
    if isinstance(target, ExternalTarget) and target.status_url:
        with urllib.request.urlopen(target.status_url.rstrip("/")
                                    + "/v1/status?sections=connections", timeout=5) as resp:
            return int(orjson.loads(resp.read())["connections"]["established"]) - 1
    return None


def node_counters(target: Target) -> dict[str, Any]:
    """Refusals and coalescing as the node counts them (our router only)."""
    try:
        if isinstance(target, RouterTarget):
            st = target.status(f"sections=totals,endpoints&endpoint={MASTER}")
            master: dict[str, Any] = next((e for e in st["endpoints"] if e["name"] == MASTER), {})
            return {"refused": st["totals"]["messages_refused"],
                    "coalesced": master.get("coalesced", 0),
                    "dropped": master.get("dropped", 0)}
    except Exception as exc:  # noqa: BLE001 - reported
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {}
