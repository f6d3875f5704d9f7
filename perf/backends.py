"""Throw-away result backends: carbon-cache and InfluxDB 1.x on 127.0.0.1, for the writer
benchmark (perf/bench_writers.py) and the tests (tests/backends.py wraps them in fixtures).

Each starts under a given directory on free ports, in the foreground as a child process;
``stop()`` / ``start()`` again on the same directories simulate an outage: InfluxDB keeps
its data, carbon its whisper files. Facts behind the configurations:
/work/shared/running-backends.md (1 s retention schema, no create-rate limit).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

__all__ = ["BackendMissing", "CarbonServer", "InfluxServer", "free_port"]


class BackendMissing(RuntimeError):
    """The backend's binary is not installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackendMissing(f"{name} not found (install Debian's {package})")
    return found


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited with {proc.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"backend not listening on {port} after {timeout}s: "
                       f"{log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[bytes] | None, kill: bool = False) -> None:
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class CarbonServer:
    """carbon-cache with a 1 s retention schema and no create-rate limit."""

    def __init__(self, directory: Path) -> None:
        self.binary = _binary("carbon-cache", "graphite-carbon")
        self.directory = directory
        self.port = free_port()
        self.whisper_dir = directory / "whisper"
        self.proc: subprocess.Popen[bytes] | None = None
        conf = directory / "conf"
        for d in (conf, self.whisper_dir, directory / "log", directory / "run",
                  directory / "lists"):
            d.mkdir(parents=True, exist_ok=True)
        (conf / "storage-schemas.conf").write_text(
            "[default]\npattern = .*\nretentions = 1s:2h\n")
        (conf / "storage-aggregation.conf").write_text(
            "[default]\npattern = .*\nxFilesFactor = 0\naggregationMethod = last\n")
        self.config = conf / "carbon.conf"
        self.config.write_text(f"""[cache]
STORAGE_DIR = {directory}
LOCAL_DATA_DIR = {self.whisper_dir}
WHITELISTS_DIR = {directory / 'lists'}
LOG_DIR = {directory / 'log'}
PID_DIR = {directory / 'run'}
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 100000
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {self.port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {free_port()}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {free_port()}
LOG_UPDATES = False
LOG_CREATES = False
LOG_CACHE_HITS = False
WHISPER_AUTOFLUSH = False
CACHE_WRITE_STRATEGY = sorted
""")
        self.conf_dir = conf

    def start(self) -> None:
        env = dict(os.environ, GRAPHITE_CONF_DIR=str(self.conf_dir),
                   GRAPHITE_STORAGE_DIR=str(self.directory))
        log = self.directory / "stdout.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, f"--config={self.config}", "--nodaemon", "start"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.directory)
        _wait_port(self.port, self.proc, log, 30)

    def stop(self, kill: bool = False) -> None:
        _stop(self.proc, kill)

    def whisper_file(self, metric: str) -> Path:
        return self.whisper_dir.joinpath(*metric.split(".")).with_suffix(".wsp")

    def metrics(self) -> list[str]:
        """Every metric path that has a whisper file."""
        out = []
        for path in self.whisper_dir.rglob("*.wsp"):
            out.append(".".join(path.relative_to(self.whisper_dir).with_suffix("").parts))
        return sorted(out)

    def fetch(self, metric: str, since: float) -> list[tuple[int, float]]:
        """(timestamp, value) of the non-empty slots since ``since`` (whisper-fetch)."""
        path = self.whisper_file(metric)
        if not path.exists():
            return []
        text = subprocess.run(["whisper-fetch", f"--from={int(since) - 1}", str(path)],
                              capture_output=True, text=True, check=True, timeout=30).stdout
        out = []
        for line in text.splitlines():
            ts, value = line.split()
            if value != "None":
                out.append((int(ts), float(value)))
        return out


class InfluxServer:
    """influxd 1.x with its own meta/data/wal directories and HTTP on a free port."""

    def __init__(self, directory: Path) -> None:
        self.binary = _binary("influxd", "influxdb")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "influxdb.conf"
        self.config.write_text(f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{directory / 'meta'}"
[data]
  dir = "{directory / 'data'}"
  wal-dir = "{directory / 'wal'}"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
""")

    def start(self) -> None:
        log = self.directory / "stdout.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([self.binary, "-config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                    if resp.status == 204:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError("influxd did not answer /ping")

    def stop(self, kill: bool = False) -> None:
        _stop(self.proc, kill)

    def query(self, db: str, q: str) -> list[dict[str, Any]]:
        """The ``series`` of one query's result (empty list when none)."""
        url = f"{self.url}/query?" + urllib.parse.urlencode({"db": db, "q": q,
                                                             "epoch": "ns"})
        with urllib.request.urlopen(url, timeout=30) as resp:
            data = orjson.loads(resp.read())
        result = data["results"][0]
        if "error" in result:
            if result["error"].startswith("database not found"):
                return []               # the writer has not created it yet
            raise RuntimeError(result["error"])
        series: list[dict[str, Any]] = result.get("series", [])
        return series

    def count(self, db: str, measurement: str = "/.*/", where: str = "") -> int:
        """Points (value field) in ``db``."""
        total = 0
        cond = f" WHERE {where}" if where else ""
        for s in self.query(db, f"SELECT count(value) FROM {measurement}{cond}"):
            total += int(s["values"][0][1])
        return total
