"""A throw-away PostgreSQL 15 server for tests: initdb + pg_ctl under a temporary directory.

The server listens on 127.0.0.1 on a free port and keeps its Unix socket in its own directory
(``-k``), so it never touches a system-wide instance. ``initdb`` and ``pg_ctl`` refuse to run
as root: as root they run as the ``postgres`` user (``runuser``) on a directory chowned to it.

Outages the tests need:
- ``crash()``: ``pg_ctl -m immediate stop`` (no shutdown checkpoint, clients see a reset);
- ``hang()`` / ``unhang()``: SIGSTOP / SIGCONT of the postmaster *and* its backends (a stopped
  postmaster alone still lets already-connected backends answer);
- ``start()`` again after ``crash()``: same data directory, same port.

Without the binaries the fixtures skip, unless ``ROUTER_REQUIRE_BACKENDS`` is set (CI), where a
missing binary is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

__all__ = ["PostgresServer", "postgresql_bin_dir", "require_postgresql", "postgresql_server"]

PG_BIN = Path(os.environ.get("ROUTER_PG_BIN", "/usr/lib/postgresql/15/bin"))


def postgresql_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None if PostgreSQL isn't installed."""
    if (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists():
        return PG_BIN
    return None


def require_postgresql() -> Path:
    """The binaries' directory; skip without them, fail under ROUTER_REQUIRE_BACKENDS."""
    found = postgresql_bin_dir()
    if found is None:
        problem = f"PostgreSQL 15 not found in {PG_BIN} (install Debian's postgresql)"
        if os.environ.get("ROUTER_REQUIRE_BACKENDS"):
            pytest.fail(f"ROUTER_REQUIRE_BACKENDS is set but {problem}", pytrace=False)
        pytest.skip(problem)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL instance in its own temporary directory (see the module docstring)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        # Not pytest's tmp_path: its parents are 0700 root, the postgres user can't enter.
        self.dir = Path(tempfile.mkdtemp(prefix="router-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr}\n{log}")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # fsync off: a test server needn't survive a power cut (the page cache survives a
        # process crash, which is what crash() is). synchronous_commit stays on: off would
        # lose the last commits in a crash(), and the tests check that none is lost.
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")

    def stop(self) -> None:
        """A clean shutdown (unhangs first, so a test that failed mid-hang still cleans up)."""
        self.unhang()
        if self.postmaster_pid() is not None:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def crash(self) -> None:
        """``pg_ctl -m immediate stop``: what clients see of a database crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def postmaster_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def _processes(self) -> list[psutil.Process]:
        pid = self.postmaster_pid()
        if pid is None:
            return []
        try:
            parent = psutil.Process(pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def hang(self) -> None:
        """Stop every process of the instance: connections stay open, nothing answers."""
        for process in self._processes():
            try:
                process.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass

    def unhang(self) -> None:
        for process in self._processes():
            try:
                process.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql over the socket directory; returns unaligned, tuples-only output."""
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", str(self.dir), "-p", str(self.port),
             "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """A fresh database; returns its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def create_schema(self, name: str, database: str = "postgres") -> str:
        """A fresh schema; returns a DSN whose ``search_path`` is it. What tests sharing one
        server use: instant, where each CREATE DATABASE copies ~8 MB (and a module's
        worth of them takes seconds to delete)."""
        self.psql(f'CREATE SCHEMA "{name}"', database)
        return f"{self.dsn(database)}?search_path={name}"

    def cleanup(self) -> None:
        """Stop (immediate: the data is thrown away, no shutdown checkpoint to wait for)
        and remove the directory."""
        try:
            self.unhang()
            if self.postmaster_pid() is not None:
                self.crash()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgresql_server() -> Iterator[PostgresServer]:
    """One running server per test module; tests get their own database from it."""
    server = PostgresServer(require_postgresql())
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
