"""A reload that adds writer x, then a second reload that removes it again, while the
writers' process is still busy with the first one (it handles its control pipe in order
and may lag: it awaits each changed writer's stop, backend close up to 5 s, at nice 10).

The node's feed thread applies both reloads at once (``ResultFeed._open`` -> ``retain``:
x registered, then forgotten). The writers' process, handling the first message late,
registers x again (``WritersProcess._open_queue`` -> ``SharedQueue.reader`` ->
``register``) and, handling the second, only stops its runner: nothing ever forgets x's
position. x is in no bound the node enforces (``ResultFeed._bounds`` has no x) and has no
runner to apply ``max_backlog_age``, so every record from then on is kept on disk for a
writer nobody configured, beyond every configured ``max_backlog_bytes``."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import orjson

from router.config import WriterSpec
from router.features.writers.feed import ResultFeed
from router.features.writers.queue import SharedQueue, shared_queue_path
from router.features.writers.spec import spec_to_json

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def configure(data_dir: Path, specs: list[WriterSpec]) -> bytes:
    return orjson.dumps({"op": "configure", "node_name": "n", "data_dir": str(data_dir),
                         "log_level": "info", "zone_endpoints": ["n"],
                         "writers": [spec_to_json(s) for s in specs]}) + b"\n"


def run_writers_process(messages: list[bytes], prelude: str = "") -> subprocess.CompletedProcess:
    """The real writers' process, fed ``messages`` on its control pipe, then end of input."""
    code = prelude + "from router.features.writers.child import main; main()"
    return subprocess.run([sys.executable, "-c", code], input=b"".join(messages), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def stale_register(data_dir: Path, a: WriterSpec, x: WriterSpec, prelude: str = "",
                   **feed_options) -> ResultFeed:
    feed = ResultFeed(str(data_dir), [a], **feed_options)
    # reload 1 (adds x) and reload 2 (removes it): the node's feed thread applies both ...
    feed.reconfigure([a, x])
    assert feed.flush(10)
    feed.reconfigure([a])
    assert feed.flush(10)
    # ... while the writers' process handles the two configure messages after that.
    done = run_writers_process([configure(data_dir, [a, x]), configure(data_dir, [a])],
                               prelude)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return feed


def test_a_writer_removed_by_a_reload_the_writers_process_had_not_handled_yet(tmp_path):
    port = _closed_port()
    a = WriterSpec("a", "graphite", port=port, max_backlog_bytes=MiB, timeout=1)
    x = WriterSpec("x", "graphite", port=port, max_backlog_bytes=MiB, timeout=1)
    data_dir = tmp_path / "data"
    feed = stale_register(data_dir, a, x, batch_seconds=0)
    try:
        for i in range(4000):                      # ~4 MiB of results after both reloads
            while not feed.submit(b'{"n":%06d,"pad":"%s"}' % (i, b"p" * 1000)):
                feed.flush(10)
        assert feed.flush(30)
    finally:
        feed.close()
    q = SharedQueue(shared_queue_path(str(data_dir)))
    try:
        writers = q.writers()
        q.confirm("a", q.stats("a").head)          # the only configured writer is done
        records, held = q.held()
    finally:
        q.close()
    assert writers == ["a"], (
        f"the queue keeps positions for {writers}, but only 'a' is configured: the "
        "writers' process registered 'x' again after the node's feed had forgotten it")
    assert held <= MiB, (
        f"{records} records ({held / MiB:.1f} MiB) are kept after the only configured "
        "writer confirmed everything, above its 1 MiB max_backlog_bytes: held for the "
        "removed writer 'x', which no bound and no runner ever moves")
