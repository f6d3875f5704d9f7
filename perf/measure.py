"""The OS side of a benchmark: CPU and RSS of process trees, machine load, ports, limits.

Everything the tools read about processes and the machine (psutil, ``/proc/net/tcp``)
rather than about messages.
"""

from __future__ import annotations

import resource
import socket
import threading
import time

import psutil

__all__ = [
    "GEN_SATURATED",
    "all_cpu",
    "cpu_seconds",
    "free_port",
    "listening",
    "machine_busy",
    "process_tree",
    "raise_nofile",
    "rss_bytes",
    "wait_listening",
]

GEN_SATURATED = 0.90        # a generator process above 90 % of one core is saturated


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        children: list[psutil.Process] = root.children(recursive=True)
        return [root] + children
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def file_rss_bytes(procs: list[psutil.Process]) -> int:
    """The file-backed part of the processes' RSS (``shared`` on Linux: mapped files such
    as the LMDB logs and shared libraries), to tell heap growth from touched maps."""
    total = 0
    for p in procs:
        try:
            total += getattr(p.memory_info(), "shared", 0)
        except psutil.NoSuchProcess:
            pass
    return total


def all_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every process on the machine (to spot outside load)."""
    out = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None:
            out[p.pid] = (p.info["name"] or "?", t.user + t.system)
    return out


def machine_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


def listening(port: int) -> bool | None:
    """Whether a TCP socket listens on ``port`` (any address), from /proc/net/tcp{,6}.

    Read from the kernel's table rather than by connecting: a probe connection would be
    one more client the node under test has to accept and log. A listening socket is the
    row with this local port, a remote address of zeros and state 0A; one substring search
    keeps a poll cheap while thousands of agent sockets fill the table. None where there
    is no /proc (not Linux).
    """
    v4 = f":{port:04X} 00000000:0000 0A ".encode()
    v6 = f":{port:04X} {'0' * 32}:0000 0A ".encode()
    found_table = False
    for table, row in (("/proc/net/tcp", v4), ("/proc/net/tcp6", v6)):
        try:
            with open(table, "rb") as f:
                data = f.read()
        except OSError:
            continue
        found_table = True
        if row in data:
            return True
    return False if found_table else None


def wait_listening(port: int, timeout: float, stop: threading.Event,
                   interval: float = 0.05) -> float | None:
    """``time.monotonic()`` when ``port`` first listens; None without /proc, on timeout,
    or once ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        state = listening(port)
        if state is None:
            return None
        if state:
            return time.monotonic()
        stop.wait(interval)
    return None
