"""Run real Icinga 2 daemons (Debian's 2.13.6) as interoperability peers.

Each :class:`IcingaNode` lives in its own directory and never touches the system
installation: every path Icinga knows about (DataDir, LogDir, CacheDir, SpoolDir,
InitRunDir, RunDir, ConfigDir) is overridden on the command line, the ApiListener binds
127.0.0.1 only, and the daemon runs in its own session so that it can be killed as a
process group. Node directory layout::

    <base_dir>/<name>/
        etc/icinga2.conf            generated configuration
        var/lib/icinga2/            DataDir (certs/, api/ with the replay log, icinga2.state)
        var/log/icinga2/  var/cache/icinga2/  var/spool/icinga2/  var/run/icinga2/ (pid file)
        icinga2.log                 FileLogger, severity debug (why messages were dropped)
        daemon.out                  the daemon's stdout/stderr (start-up errors land here)
        validate.out                output of the last ``icinga2 daemon -C``

The REST API (same port as the cluster protocol) is used to observe and drive the node.
"""

from __future__ import annotations

import base64
import ctypes
import grp
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

from router import pki

__all__ = [
    "IcingaApiError",
    "IcingaNode",
    "IcingaFactory",
    "find_icinga2",
    "free_port",
    "port_is_free",
    "start_all",
]

T = TypeVar("T")

PLUGIN_DIR = "/usr/lib/nagios/plugins"
API_USER = "root"
#: Where Debian installs the real binary; /usr/sbin/icinga2 is a shell wrapper that execs it.
_FALLBACK_BINARIES = ("/usr/sbin/icinga2", "/usr/lib/x86_64-linux-gnu/icinga2/sbin/icinga2")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port``.

    Icinga's ApiListener sets SO_REUSEPORT, so a second daemon (or anything else with
    SO_REUSEPORT) on the same port starts without any error and the kernel spreads the
    connections over both. Binding here *without* SO_REUSEPORT detects such a listener;
    SO_REUSEADDR keeps sockets in TIME_WAIT (a node restarted on its port) from counting.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def find_icinga2() -> str | None:
    """Path of the ``icinga2`` binary: ``$ICINGA2_BIN``, then ``$PATH``, then /usr/sbin."""
    override = os.environ.get("ICINGA2_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("icinga2")
    if found:
        return found
    for candidate in _FALLBACK_BINARIES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


# --------------------------------------------------------------------------------------
# Icinga DSL rendering
# --------------------------------------------------------------------------------------


def _q(value: str) -> str:
    """An Icinga DSL string literal (the DSL knows \\" \\\\ \\n \\t \\r escapes)."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"')
        .replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _array(values: Iterable[str]) -> str:
    return "[ " + ", ".join(_q(v) for v in values) + " ]"


class IcingaApiError(RuntimeError):
    """The REST API answered with an HTTP error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


class IcingaNode:
    """One isolated Icinga 2 daemon, configured from Python and driven over its REST API.

    Args:
        base_dir: parent directory; the node uses ``base_dir/name``.
        name: NodeName, also the certificate CN and the Endpoint name.
        zone: ZoneName (the node's own zone).
        api_port: ApiListener port on 127.0.0.1 (cluster protocol and REST API).
        endpoints: ``[{"name": ..., "host": "127.0.0.1", "port": 5665}]``; host/port are
            optional (an Endpoint without host is only ever accepted, never dialled). The
            node's own Endpoint is added if missing.
        zones: ``[{"name": ..., "endpoints": [...], "parent": ..., "global": bool}]``.
        services: Icinga DSL appended to the config (Host/Service objects, with or without
            ``zone = "..."``).
        accept_config, accept_commands: ApiListener settings.
        checker: add a CheckerComponent.
        extra_config: more DSL appended after ``services``.
        binary: icinga2 binary (default: :func:`find_icinga2`).
    """

    def __init__(
        self,
        base_dir: Path,
        name: str,
        zone: str,
        *,
        api_port: int,
        endpoints: list[dict[str, Any]],
        zones: list[dict[str, Any]],
        services: str = "",
        accept_config: bool = True,
        accept_commands: bool = True,
        checker: bool = True,
        extra_config: str = "",
        binary: str | None = None,
    ) -> None:
        self.name = name
        self.zone = zone
        self.api_port = api_port
        self.endpoints = [dict(e) for e in endpoints]
        if not any(e["name"] == name for e in self.endpoints):
            self.endpoints.insert(0, {"name": name})
        self.zones = [dict(z) for z in zones]
        self.services = services
        self.accept_config = accept_config
        self.accept_commands = accept_commands
        self.checker = checker
        self.extra_config = extra_config
        self.binary = binary or find_icinga2() or "icinga2"

        self.dir = Path(base_dir) / name
        self.config_dir = self.dir / "etc"
        self.config_path = self.config_dir / "icinga2.conf"
        self.data_dir = self.dir / "var/lib/icinga2"
        self.certs_dir = self.data_dir / "certs"
        self.log_dir = self.dir / "var/log/icinga2"
        self.cache_dir = self.dir / "var/cache/icinga2"
        self.spool_dir = self.dir / "var/spool/icinga2"
        self.run_dir = self.dir / "var/run"
        self.init_run_dir = self.run_dir / "icinga2"
        self.pid_path = self.init_run_dir / "icinga2.pid"
        self.log_path = self.dir / "icinga2.log"
        self.stdout_path = self.dir / "daemon.out"
        self.validate_path = self.dir / "validate.out"

        self.password = secrets.token_hex(16)
        self.ticket_salt = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout_file: IO[bytes] | None = None
        self._ssl_context: ssl.SSLContext | None = None

        for directory in (
            self.config_dir, self.certs_dir, self.log_dir, self.cache_dir,
            self.spool_dir, self.init_run_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<IcingaNode {self.name} zone={self.zone} port={self.api_port} {state}>"

    def __enter__(self) -> IcingaNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- configuration

    @property
    def ca_path(self) -> Path:
        return self.certs_dir / "ca.crt"

    def render_config(self) -> str:
        """The text of etc/icinga2.conf."""
        out = [
            "/* generated by perf/icinga.py */",
            f"const NodeName = {_q(self.name)}",
            f"const ZoneName = {_q(self.zone)}",
            f"const TicketSalt = {_q(self.ticket_salt)}",
            f"const PluginDir = {_q(PLUGIN_DIR)}",
            "",
            "include <itl>",
            "include <plugins>",
            "",
            'object FileLogger "debug-file" {',
            f"  path = {_q(str(self.log_path))}",
            '  severity = "debug"',
            "}",
            "",
            'object ApiListener "api" {',
            '  bind_host = "127.0.0.1"',
            f"  bind_port = {int(self.api_port)}",
            f"  accept_config = {_bool(self.accept_config)}",
            f"  accept_commands = {_bool(self.accept_commands)}",
            "  ticket_salt = TicketSalt",
            "}",
            "",
        ]
        if self.checker:
            out += ['object CheckerComponent "checker" { }', ""]
        out += [
            f"object ApiUser {_q(API_USER)} {{",
            f"  password = {_q(self.password)}",
            '  permissions = [ "*" ]',
            "}",
            "",
        ]
        for endpoint in self.endpoints:
            out.append(f"object Endpoint {_q(endpoint['name'])} {{")
            if endpoint.get("port") is not None or endpoint.get("host"):
                out.append(f"  host = {_q(endpoint.get('host') or '127.0.0.1')}")
            if endpoint.get("port") is not None:
                out.append(f"  port = {_q(str(endpoint['port']))}")
            out += ["}", ""]
        for zone in self.zones:
            out.append(f"object Zone {_q(zone['name'])} {{")
            if zone.get("endpoints"):
                out.append(f"  endpoints = {_array(zone['endpoints'])}")
            if zone.get("parent"):
                out.append(f"  parent = {_q(zone['parent'])}")
            if zone.get("global"):
                out.append("  global = true")
            out += ["}", ""]
        if self.services:
            out += ["/* services */", self.services, ""]
        if self.extra_config:
            out += ["/* extra_config */", self.extra_config, ""]
        return "\n".join(out)

    def write_config(self) -> None:
        self.config_path.write_text(self.render_config())

    def install_certs(self, ca_crt: Path, cert: Path, key: Path) -> None:
        """Copy the CA, node certificate and key into DataDir/certs/ under Icinga's names."""
        shutil.copyfile(ca_crt, self.certs_dir / "ca.crt")
        shutil.copyfile(cert, self.certs_dir / f"{self.name}.crt")
        shutil.copyfile(key, self.certs_dir / f"{self.name}.key")
        (self.certs_dir / f"{self.name}.key").chmod(0o600)
        self._ssl_context = None

    # ---------------------------------------------------------------- process control

    def _command(self, *extra: str) -> list[str]:
        defines = {
            "DataDir": self.data_dir,
            "LogDir": self.log_dir,
            "CacheDir": self.cache_dir,
            "SpoolDir": self.spool_dir,
            "InitRunDir": self.init_run_dir,
            "RunDir": self.run_dir,
            "ConfigDir": self.config_dir,
        }
        cmd = [self.binary, "daemon", "-c", str(self.config_path)]
        for key, value in defines.items():
            cmd.append(f"-DConfiguration.{key}={value}")
        cmd.extend(extra)
        return cmd

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        env["ICINGA2_USER"] = pwd.getpwuid(os.getuid()).pw_name
        env["ICINGA2_GROUP"] = grp.getgrgid(os.getgid()).gr_name
        return env

    def validate(self, timeout: float = 60) -> str:
        """Run ``icinga2 daemon -C``; return its output, raise RuntimeError on failure."""
        self.write_config()
        try:
            result = subprocess.run(
                self._command("-C"),
                env=self._env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"icinga2 -C for {self.name} did not finish within {timeout}s"
            ) from exc
        output = result.stdout.decode(errors="replace")
        self.validate_path.write_text(output)
        if result.returncode != 0:
            raise RuntimeError(
                f"icinga2 config validation failed for {self.name} "
                f"(exit {result.returncode}); config {self.config_path}:\n{output[-6000:]}"
            )
        return output

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        """The daemon's exit code once it has exited (negative: the signal that killed
        it); None while it runs or before it was started."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def pid(self) -> int | None:
        """Pid of the umbrella process (the one we started), None when not started."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30) -> None:
        """Validate, start the daemon and wait until the REST API answers as this node."""
        deadline = time.monotonic() + timeout
        self.spawn(timeout)
        self.wait_ready(max(0.0, deadline - time.monotonic()))

    def spawn(self, timeout: float = 30) -> None:
        """Validate and start the daemon without waiting for it (see :meth:`start`)."""
        if self.is_running():
            return
        for required in (self.ca_path, self.certs_dir / f"{self.name}.crt",
                         self.certs_dir / f"{self.name}.key"):
            if not required.exists():
                raise RuntimeError(f"{self.name}: {required} missing; call install_certs() first")
        if not port_is_free(self.api_port):
            raise RuntimeError(
                f"{self.name}: 127.0.0.1:{self.api_port} is already in use (Icinga binds with "
                "SO_REUSEPORT and would silently share the port)"
            )
        self.validate(timeout=timeout)
        self._stdout_file = open(self.stdout_path, "ab")
        self._proc = subprocess.Popen(
            self._command(),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._stdout_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: killpg at teardown
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until /v1/status/ApiListener answers with this node's identity; stop the
        daemon and raise (with its output) when it exits or the time is up."""
        if self._proc is None:
            raise RuntimeError(f"{self.name}: not started")
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RuntimeError(
                    f"icinga2 {self.name} exited with {code} during start-up\n"
                    f"{self.diagnostics(40)}"
                )
            try:
                identity = self.api_listener_status().get("identity")
            except (OSError, http.client.HTTPException, IcingaApiError, ValueError) as exc:
                last_error = exc
            else:
                if identity == self.name:
                    return
                last_error = RuntimeError(f"port answered as {identity!r}, not {self.name!r}")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(
            f"icinga2 {self.name}: REST API on 127.0.0.1:{self.api_port} not ready after "
            f"{timeout:.1f}s (last error: {last_error!r})\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM the daemon, SIGKILL its process group after ``timeout``. Idempotent.

        Returns the exit code (None if the node was never started).
        """
        proc = self._proc
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the umbrella is the group leader
        if proc.poll() is None:
            target = proc.pid
            try:
                pid_in_file = int(self.pid_path.read_text().strip())
                if os.getpgid(pid_in_file) == pgid:
                    target = pid_in_file
            except (OSError, ValueError):
                pass
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        # The worker is a child of the umbrella and in the same group: make sure nothing
        # of that group survives (e.g. a worker orphaned by a crashed umbrella).
        _killpg(pgid)
        if self._stdout_file is not None:
            self._stdout_file.close()
            self._stdout_file = None
        return proc.returncode

    # ---------------------------------------------------------------- REST API

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))
            # We dial 127.0.0.1 while the certificate names the node; the chain is still
            # verified against the test CA.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._ssl_context = ctx
        return self._ssl_context

    def api(self, path: str, method: str = "GET", body: dict[str, Any] | None = None,
            timeout: float = 10) -> dict[str, Any]:
        """Call the REST API and return the decoded JSON answer.

        Raises IcingaApiError on an HTTP error status (4xx/5xx), OSError when the
        connection fails.
        """
        token = base64.b64encode(f"{API_USER}:{self.password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.api_port, context=self._context(), timeout=timeout
        )
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read().decode(errors="replace")
        finally:
            conn.close()
        if response.status >= 400:
            raise IcingaApiError(method, path, response.status, raw)
        return json.loads(raw) if raw else {}

    def api_listener_status(self) -> dict[str, Any]:
        """The ``api`` object of /v1/status/ApiListener (conn_endpoints, zones, json_rpc...)."""
        status: dict[str, Any] = self.api("/v1/status/ApiListener")["results"][0]["status"]["api"]
        return status

    def connected_endpoints(self) -> list[str]:
        return list(self.api_listener_status().get("conn_endpoints", []))

    def endpoint(self, name: str) -> dict[str, Any] | None:
        """Attributes of an Endpoint object (connected, syncing, log positions, rates)."""
        return self._object("endpoints", name)

    def host(self, name: str) -> dict[str, Any] | None:
        """Attributes of a Host (incl. last_check_result), None when unknown."""
        return self._object("hosts", name)

    def service(self, host: str, service: str) -> dict[str, Any] | None:
        """Attributes of a Service (incl. last_check_result), None when unknown."""
        return self._object("services", f"{host}!{service}")

    def _object(self, kind: str, name: str) -> dict[str, Any] | None:
        path = f"/v1/objects/{kind}/{urllib.parse.quote(name, safe='!')}"
        try:
            results = self.api(path)["results"]
        except IcingaApiError as exc:
            if exc.status == 404:
                return None
            raise
        return results[0]["attrs"] if results else None

    def process_check_result(self, host: str, service: str | None, exit_status: int,
                             output: str, **extra: Any) -> dict[str, Any]:
        """POST /v1/actions/process-check-result for a service (or the host when
        ``service`` is None). ``extra`` adds parameters such as performance_data."""
        body: dict[str, Any] = {"exit_status": exit_status, "plugin_output": output, **extra}
        body.update(_target(host, service))
        return self.api("/v1/actions/process-check-result", "POST", body)

    def acknowledge(self, host: str, service: str | None, comment: str,
                    author: str = "interop-test", **extra: Any) -> dict[str, Any]:
        """POST /v1/actions/acknowledge-problem (the object must be in a problem state)."""
        body: dict[str, Any] = {"author": author, "comment": comment, **extra}
        body.update(_target(host, service))
        return self.api("/v1/actions/acknowledge-problem", "POST", body)

    # ---------------------------------------------------------------- waiting and logs

    def wait_for(self, predicate: Callable[[], T], timeout: float, interval: float = 0.2,
                 what: str = "condition") -> T:
        """Poll ``predicate`` until it returns something truthy and return that value.

        Exceptions raised by the predicate count as "not yet" (the last one is reported).
        Raises TimeoutError with the tail of this node's log, or RuntimeError at once if
        the daemon died meanwhile.
        """
        __tracebackhide__ = True  # pytest: show the caller, not this loop
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - reported below
                last_error = exc
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"icinga2 {self.name} exited with {self._proc.returncode} while waiting "
                    f"for {what}\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        detail = f" (last error: {last_error!r})" if last_error else ""
        raise TimeoutError(
            f"{self.name}: timed out after {timeout}s waiting for {what}{detail}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 60, include_http: bool = False) -> str:
        """Last ``n`` lines of the debug log (or of daemon.out when there is no log yet).

        Unless ``include_http``, the lines caused by REST requests (mostly the harness's
        own polling) are left out so that the cluster messages stay visible.
        """
        if not self.log_path.exists():
            return _tail(self.stdout_path, n)
        if include_http:
            return _tail(self.log_path, n)
        return "".join(_without_http(_tail(self.log_path, n * 20).splitlines(True))[-n:])

    def stdout_tail(self, n: int = 20) -> str:
        """Last ``n`` lines of the daemon's stdout/stderr (start-up errors, crashes)."""
        return "".join(_without_http(_tail(self.stdout_path, n * 20).splitlines(True))[-n:])

    def diagnostics(self, n: int = 60) -> str:
        """What to print when a test failed: the log tail, plus daemon.out when the daemon
        did not run or did not exit cleanly, plus validate.out when it never started."""
        code = self._proc.returncode if self._proc is not None else "never started"
        parts = [f"===== {self.name} (dir {self.dir}, exit code {code}) ====="]
        if self.log_path.exists():
            parts.append(f"--- {self.log_path}, last {n} lines without REST requests ---\n"
                         f"{self.log_tail(n)}")
        if self.stdout_path.exists() and (not self.log_path.exists() or code != 0):
            parts.append(f"--- {self.stdout_path} ---\n{self.stdout_tail(20)}")
        if self.validate_path.exists() and not self.stdout_path.exists():
            parts.append(f"--- {self.validate_path} ---\n{_tail(self.validate_path, 20)}")
        return "\n".join(parts)


def _target(host: str, service: str | None) -> dict[str, str]:
    if service is None:
        return {"type": "Host", "host": host}
    return {"type": "Service", "service": f"{host}!{service}"}


_HTTP_MARKERS = ("/HttpServerConnection: ", "/HttpUtility: ", "/HttpHandler: ",
                 "notice/ApiListener: New HTTP client")
_NO_CERT = " (no client certificate)"


def _without_http(lines: list[str]) -> list[str]:
    """Drop REST noise: request lines and the TLS accept lines of HTTP clients."""
    http_peers = set()
    for line in lines:
        if "/HttpServerConnection: " in line and "(from [" in line:
            http_peers.add(line.rsplit("(from ", 1)[1].split(")", 1)[0])
    kept = []
    for line in lines:
        if any(marker in line for marker in _HTTP_MARKERS):
            continue
        if _NO_CERT in line and "New client connection from " in line:
            peer = line.split("New client connection from ", 1)[1].split(_NO_CERT, 1)[0]
            if peer in http_peers:
                continue
        kept.append(line)
    return kept


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except FileNotFoundError:
        return f"({path} does not exist)"


_PR_SET_PDEATHSIG = 1
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)  # loaded before any fork
except OSError:  # pragma: no cover - not Linux/glibc
    _libc = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the daemon when the test process dies.

    A safety net for a test run killed with SIGKILL (no teardown). The signal is tied to
    the *thread* that forked, so nodes must be spawned from a thread that outlives them
    (the main thread, as :func:`start_all` does): never from a short-lived worker thread.
    """
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_all(nodes: Iterable[IcingaNode], timeout: float = 30) -> None:
    """Start several nodes at once (spawn all, then wait for each); stop all on error.

    Only for nodes that do not dial each other: a node dials its peers right at start-up
    and, when refused, again only after 10 s (Icinga's reconnect timer). Start the node
    being dialled first, then its dialling peers with this.
    """
    nodes = list(nodes)
    deadline = time.monotonic() + timeout
    try:
        for node in nodes:
            node.spawn(timeout)
        for node in nodes:
            node.wait_ready(max(0.0, deadline - time.monotonic()))
    except BaseException:
        for node in nodes:
            node.stop()
        raise


class IcingaFactory:
    """Creates nodes under one directory with certificates from one test CA; stops them all.

    The CA and the node certificates come from :mod:`router.pki` (EC P-256, CN and
    ``SAN DNS`` = node name), so every interop run also proves that real Icinga accepts
    the certificates the router issues.

    ``factory(name, zone, **kwargs)`` takes the keyword arguments of :class:`IcingaNode`;
    ``api_port`` defaults to a free port. ``issue(name)`` makes certificates from the same
    CA for other parties (for example the router under test).
    """

    def __init__(self, base_dir: Path, binary: str | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.binary = binary
        self.ca_dir = self.base_dir / "ca"
        self.ca_crt, self.ca_key = pki.create_ca(self.ca_dir, common_name="Interop Test CA")
        self.nodes: list[IcingaNode] = []

    def issue(self, name: str) -> tuple[Path, Path]:
        """Certificate and key for ``name`` from the factory's CA: (cert_path, key_path)."""
        return pki.issue_node_files(self.ca_dir, self.base_dir / "issued", name)

    def __call__(self, name: str, zone: str, **kwargs: Any) -> IcingaNode:
        kwargs.setdefault("api_port", free_port())
        kwargs.setdefault("endpoints", [{"name": name}])
        kwargs.setdefault("zones", [{"name": zone, "endpoints": [name]}])
        kwargs.setdefault("binary", self.binary)
        node = IcingaNode(self.base_dir, name, zone, **kwargs)
        node.install_certs(self.ca_crt, *self.issue(name))
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def diagnostics(self, n: int = 60) -> str:
        """:meth:`IcingaNode.diagnostics` of every node, for a failure report."""
        return "\n".join(node.diagnostics(n) for node in self.nodes)
