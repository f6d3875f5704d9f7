"""Storage faults under a running node: full disk, corrupt log, read-only data directory.

Each test puts the replay log on a real file system in the failing state (issue 21 part
5; the results are written down in docs/reliability.md, "Storage faults"):

- **disk full**: the node's data directory is a 2 MiB tmpfs. The satellite logs check
  results for its absent parent until the disk is full: retention drops the oldest
  records (counted), the HA partner keeps receiving every result live, the node never
  stops, and the parent, once back, gets the newest records in order. A disk full to its
  last block (another program filled it) still lets the log evict, through its reserve.
- **corrupt or truncated log at start**: ``router serve`` exits non-zero with one line
  naming ``data.mdb`` and ``router replaylog reset --data-dir``; the library raises
  ``ReplayLogCorrupt``; the file is left exactly as it was.
- **read-only data directory**: at start (a read-only bind mount) ``router serve`` exits
  with one line saying the directory is read-only; while running (ext4 with
  ``errors=remount-ro``, an error triggered through ``/sys/fs/ext4/<dev>/
  trigger_fs_error``: what the kernel does after an I/O error) the node keeps routing
  live traffic, logs the failure (rate-limited) and counts every record it could not
  store in ``router_replay_write_failures_total``.

The mounts need root (and a loop device for ext4); without them the tests skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from replaylog import ReplayLogCorrupt, ReplayStore
from replaylog.env import DISK_RESERVE_BYTES, DISK_RESERVE_FILE
from router.app import RouterService
from router.errors import DataDirError
from router.features.writers.base import WriterBackendError
from router.features.writers.queue import SharedQueue, reset_shared_queue, shared_queue_path
from tests.nodeutil import (ClusterSpec, FakePeer, check_result, free_port, metrics_text,
                            status_json, wait_until)
from tests.pkiutil import make_test_pki

FAST = "reconnect_min = 0.1\nreconnect_max = 0.3\nconnect = 3.0"
ZONES = [("master", ["master"], None), ("sat", ["sat1", "sat2"], "master"),
         ("agent1", ["agent1"], "sat")]


def run(coro, timeout: float = 90.0):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


def need_root() -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a file system needs root")


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    need_root()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory))
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot mount a tmpfs: {e.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@contextlib.contextmanager
def read_only_bind(source: Path, target: Path) -> Iterator[Path]:
    need_root()
    target.mkdir(parents=True, exist_ok=True)
    try:
        sh("mount", "--bind", str(source), str(target))
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot bind-mount: {e.stderr.strip()}")
    try:
        sh("mount", "-o", "remount,bind,ro", str(target))
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextlib.contextmanager
def ext4_volume(image: Path, mountpoint: Path, size_mb: int = 32) -> Iterator[Path]:
    """An ext4 file system on a loop device, mounted ``errors=remount-ro``; yields the
    sysfs file that makes the kernel record an error (and so remount it read-only)."""
    need_root()
    if not (shutil.which("losetup") and shutil.which("mkfs.ext4")):
        pytest.skip("losetup / mkfs.ext4 missing")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    try:
        loop = sh("losetup", "-f", "--show", str(image))
    except subprocess.CalledProcessError as e:
        pytest.skip(f"no loop device: {e.stderr.strip()}")
    try:
        sh("mkfs.ext4", "-q", "-F", loop)
        mountpoint.mkdir(parents=True, exist_ok=True)
        sh("mount", "-o", "errors=remount-ro", loop, str(mountpoint))
        trigger = Path("/sys/fs/ext4") / Path(loop).name / "trigger_fs_error"
        try:
            if not trigger.exists():
                pytest.skip("this kernel has no ext4 trigger_fs_error")
            yield trigger
        finally:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "sat2", "agent1"])


def outputs(peer: FakePeer) -> list[str]:
    return [m["params"]["cr"]["output"] for m in peer.messages("event::CheckResult")]


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


# -- the disk fills --------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_drops_the_oldest_records_and_live_traffic_keeps_flowing(
        tmp_path, pki, caplog):
    spec = ClusterSpec(tmp_path, pki, ZONES, timeouts=FAST)
    sent = 9000          # ~5 MB of frames for a 2 MiB file system

    async def main():
        sat = await spec.start("sat1")
        try:
            partner = await FakePeer.connect(spec.port("sat1"), pki, "sat2",
                                             server_name="sat1")
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: "sat2" in sat.node.connected_names
                             and "agent1" in sat.node.connected_names, what="peers")
            for i in range(sent):
                agent.send("event::CheckResult", check_result("agent1", "disk", f"r{i}"))
                if i % 500 == 499:
                    await agent.writer.drain()
                    await asyncio.sleep(0.05)
            # Live traffic: the HA partner gets every result, in order, full disk or not.
            await wait_until(lambda: len(outputs(partner)) >= sent, timeout=60,
                             what="every result at the HA partner")
            assert outputs(partner) == [f"r{i}" for i in range(sent)]
            writer = sat.node.replay.writer
            assert await asyncio.get_running_loop().run_in_executor(None, writer.flush, 30)
            stats = sat.node.replay.store.stats()
            assert stats["disk_full"] > 0, stats
            assert stats["evicted"] > 0          # retention dropped records, counted
            text = await metrics_text(sat)
            assert 'router_replay_evicted_total{zone="master"}' in text
            assert (await status_json(sat))["node"]["name"] == "sat1"   # still serving
            # The parent comes back: it gets the newest records, oldest dropped, in order.
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            kept = stats["zones"]["master"]["records"]
            await wait_until(lambda: len(outputs(master)) >= kept, timeout=30,
                             what="replay of what the full disk kept")
            got = [int(o[1:]) for o in outputs(master)]
            assert got == sorted(set(got)), "replayed out of order or twice"
            assert got[0] > 0, "the oldest records should have been dropped first"
            assert got[-1] >= sent - 2000, "the newest records must be kept"
            for peer in (partner, agent, master):
                await peer.close()
        finally:
            await sat.stop()

    with tmpfs(tmp_path / "sat1", "2m"):
        run(main(), timeout=150)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR
              and "replay log" in r.getMessage()]
    assert len(errors) < 50, f"{len(errors)} error lines: the log must not flood"


def test_a_disk_full_to_the_last_block_still_lets_the_log_evict(tmp_path):
    """Found by CI: once a disk had no free block, the eviction meant to make room could
    not commit either (LMDB copies the pages it changes), and every later append failed.
    The disk reserve beside data.mdb is given up for that one eviction."""
    with tmpfs(tmp_path / "fs", "1m") as fs:
        store = ReplayStore(fs / "rl")
        assert (fs / "rl" / DISK_RESERVE_FILE).stat().st_blocks * 512 >= DISK_RESERVE_BYTES
        try:
            for i in range(20):
                store.append_many([("master", float(20 * i + j), b"x" * 500, None)
                                   for j in range(20)])
            fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, bytes(4096)):     # the disk's last free block
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            store.append_many([("master", 400.0 + j, b"y" * 500, None) for j in range(200)])
            stats = store.stats()
            assert stats["disk_full"] == 1 and stats["disk_reserve_used"] == 1
            assert stats["evicted"] > 0 and not (fs / "rl" / DISK_RESERVE_FILE).exists()
            newest = [r.ts for r in store.iter_from("master")][-200:]
            assert newest == [400.0 + j for j in range(200)]
        finally:
            store.close()


# -- a corrupt or truncated log at start ------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def serve(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env=ENV)


def damage_file(data: Path, damage: str) -> bytes:
    """Overwrite ``data`` with garbage, cut it to half, or to nothing; its bytes now."""
    size = data.stat().st_size
    if damage == "garbage":
        data.write_bytes(os.urandom(size))
    elif damage == "truncated":
        os.truncate(data, size // 2)
    else:
        os.truncate(data, 0)
    return data.read_bytes()


def make_log(path: Path, n: int = 50) -> None:
    with ReplayStore(path, sync=False) as store:
        store.append_many([("master", 100.0 + i, b"2:{},", None) for i in range(n)])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_serve_refuses_a_corrupt_log_with_the_recovery_command(tmp_path, pki, damage):
    spec = ClusterSpec(tmp_path, pki, ZONES, timeouts=FAST)
    config = tmp_path / "sat1.toml"
    spec.config("sat1")
    log_dir = tmp_path / "sat1" / "replaylog"
    make_log(log_dir, 400)
    data = log_dir / "data.mdb"
    before = damage_file(data, damage)
    proc = serve(config, tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert str(data) in errors[0] and "corrupt or truncated" in errors[0]
    assert f"router replaylog reset --data-dir {tmp_path / 'sat1'}" in errors[0]
    assert "Traceback" not in proc.stderr
    assert data.read_bytes() == before, "the damaged file must be left as it was"

    async def library():
        with pytest.raises(ReplayLogCorrupt) as info:
            await RouterService(spec.config("sat1")).start()
        assert info.value.data_file == data
    run(library())
    assert data.read_bytes() == before
    # The documented recovery works: moved aside (kept), and the node starts empty.
    reset = subprocess.run([sys.executable, "-m", "router", "replaylog", "reset",
                            "--data-dir", str(tmp_path / "sat1")],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=ENV)
    assert reset.returncode == 0, reset.stderr
    moved = [p for p in (tmp_path / "sat1").iterdir() if p.name.startswith("replaylog.broken")]
    assert len(moved) == 1 and (moved[0] / "data.mdb").read_bytes() == before

    async def starts_again():
        service = RouterService(spec.config("sat1"))
        await service.start()
        try:
            assert service.node.replay.store.total_records == 0
        finally:
            await service.stop()
    run(starts_again())


# -- a read-only data directory ----------------------------------------------------------

def test_serve_refuses_a_read_only_data_directory(tmp_path, pki):
    spec = ClusterSpec(tmp_path, pki, ZONES, timeouts=FAST)
    real = tmp_path / "real"
    make_log(real / "replaylog")
    with read_only_bind(real, tmp_path / "sat1"):
        spec.config("sat1")
        proc = serve(tmp_path / "sat1.toml", tmp_path)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, proc.stderr
        assert str(tmp_path / "sat1") in errors[0]
        assert "read-only" in errors[0].lower(), errors[0]
        assert "Traceback" not in proc.stderr

        async def library():
            with pytest.raises(DataDirError, match="read-only file system"):
                await RouterService(spec.config("sat1")).start()
        run(library())
    with ReplayStore(real / "replaylog", readonly=True) as store:
        assert store.total_records == 50          # nothing touched


@pytest.mark.slow
def test_a_data_directory_that_turns_read_only_while_running(tmp_path, pki, caplog):
    spec = ClusterSpec(tmp_path, pki, ZONES, timeouts=FAST)
    before, after = 300, 3000

    async def main(trigger: Path):
        sat = await spec.start("sat1")
        try:
            partner = await FakePeer.connect(spec.port("sat1"), pki, "sat2",
                                             server_name="sat1")
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: "sat2" in sat.node.connected_names
                             and "agent1" in sat.node.connected_names, what="peers")
            for i in range(before):
                agent.send("event::CheckResult", check_result("agent1", "ro", f"r{i}"))
            await wait_until(lambda: sat.node.replay.persisted >= before, what="persisted")
            writer = sat.node.replay.writer
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, writer.flush, 30)
            assert writer.failed == 0
            trigger.write_text("router test: remount read-only\n")   # the kernel's reaction
            for i in range(before, before + after):
                agent.send("event::CheckResult", check_result("agent1", "ro", f"r{i}"))
                if i % 500 == 499:
                    await agent.writer.drain()
                    await asyncio.sleep(0.02)
            await wait_until(lambda: len(outputs(partner)) >= before + after, timeout=60,
                             what="every result at the HA partner")
            assert outputs(partner) == [f"r{i}" for i in range(before + after)]
            await loop.run_in_executor(None, writer.flush, 30)
            assert writer.failed >= after, writer.stats()
            text = await metrics_text(sat)
            assert metric(text, 'router_replay_write_failures_total{reason="storage"}') \
                == writer.failed
            status = await status_json(sat)
            assert status["node"]["name"] == "sat1"
            # Still routing after the failures: one more live result.
            agent.send("event::CheckResult", check_result("agent1", "ro", "last"))
            await wait_until(lambda: outputs(partner)[-1:] == ["last"], what="live result")
            for peer in (partner, agent):
                await peer.close()
        finally:
            await sat.stop()

    with ext4_volume(tmp_path / "disk.img", tmp_path / "sat1") as trigger:
        run(main(trigger), timeout=150)
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.ERROR and "replay log" in r.getMessage()]
    assert lines, "the write failures must be logged"
    assert any("read-only" in line.lower() for line in lines), lines[:3]
    assert len(lines) < 50, f"{len(lines)} error lines: the log must not flood"


WRITER = '[[writers]]\nname = "g"\ntype = "graphite"\nhost = "127.0.0.1"\nport = {port}\n'


def _filled_writer_queue(data_dir: Path, n: int = 3000) -> Path:
    queue = SharedQueue(shared_queue_path(str(data_dir)))
    queue.register("g")
    for _ in range(n // 100):
        queue.append_many([(1.0, b"x" * 1000)] * 100, {})
    queue.close()
    return shared_queue_path(str(data_dir)) / "data.mdb"


def _wait_for_line(path: Path, text: str, seconds: float) -> str | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if text in line:
                return line
        time.sleep(0.1)
    return None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_writer_queue_is_reported_and_the_node_keeps_routing(tmp_path, pki, damage):
    """A writer queue cut short killed the node with SIGBUS at every start (LMDB maps the
    file and read a page beyond its end). Now the node starts and routes, the writers do
    not, and the log names the file and the recovery command; run while the node is up
    (nothing holds a queue that could not be opened), the writers start on their own."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)], timeouts=FAST)
    spec.config("master", extra=WRITER.format(port=free_port()))
    config = tmp_path / "master.toml"
    data_dir = tmp_path / "master"
    data = _filled_writer_queue(data_dir)
    before = damage_file(data, damage)
    err = tmp_path / "serve.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config",
                                 str(config)], stderr=stderr, stdout=subprocess.DEVNULL,
                                cwd=tmp_path, env=ENV)
        try:
            up = _wait_for_line(err, "cluster listener on", 30)
            line = _wait_for_line(err, "corrupt or truncated", 10)
            time.sleep(0.5)
            assert proc.poll() is None, err.read_text()        # still running
            assert up is not None and line is not None, err.read_text()
            assert data.read_bytes() == before, "the damaged file must be left as it was"
            reset = subprocess.run([sys.executable, "-m", "router", "writers", "reset",
                                    "--data-dir", str(data_dir)], capture_output=True,
                                   text=True, timeout=60, cwd=tmp_path, env=ENV)
            assert reset.returncode == 0, reset.stderr
            started = _wait_for_line(err, "writer g (graphite) started", 20)
            reopened = _wait_for_line(err, "their queue is open again", 20)
            assert started is not None and reopened is not None, err.read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert proc.returncode == 0, err.read_text()
    assert str(data) in line
    assert f"router writers reset --data-dir {data_dir}" in line
    text = err.read_text()
    assert "Traceback" not in text
    assert text.count("writer g (graphite) cannot start") == 1, text    # not every retry
    moved = [p for p in data_dir.iterdir() if p.name.startswith("writers-queue.broken-")]
    assert len(moved) == 1 and (moved[0] / "data.mdb").read_bytes() == before


def test_writers_reset_refuses_a_queue_in_use(tmp_path) -> None:
    data_dir = tmp_path / "node"
    _filled_writer_queue(data_dir, 100)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from router.features.writers.queue import SharedQueue\n"
         f"q = SharedQueue({str(shared_queue_path(str(data_dir)))!r})\n"
         "print('open', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        reset = subprocess.run([sys.executable, "-m", "router", "writers", "reset",
                                "--data-dir", str(data_dir)],
                               capture_output=True, text=True, timeout=60, env=ENV)
        assert reset.returncode == 1
        assert "is in use: stop the node first" in reset.stderr
        assert shared_queue_path(str(data_dir)).is_dir()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with pytest.raises(WriterBackendError) as refused:      # nothing at all to move
        SharedQueue(tmp_path / "empty-file-dir").close()
        data = tmp_path / "empty-file-dir" / "data.mdb"
        os.truncate(data, 4096)
        SharedQueue(tmp_path / "empty-file-dir")
    assert refused.value.reason == "queue_corrupt"
    assert reset_shared_queue(tmp_path / "elsewhere") is None
