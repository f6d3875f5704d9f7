"""A PostgreSQL writer backend in its own process, driven line by line over stdin.

Why a process: the HA tests must kill -9 the active writer (no ``close()``, no goodbye) and
SIGSTOP it (a hung node that wakes up believing it still writes), which a coroutine in the
test's own loop can't be made to suffer.

Usage: ``python tests/pg_writer_proc.py DSN ENDPOINT FAILOVER_TIMEOUT [TIMEOUT]``; commands,
one per line, each answered with one JSON line:

- ``open``                       -> ``{"ok": true}`` or ``{"error": reason}``
- ``role``                       -> ``{"active": bool}`` (``holds_role``)
- ``write HOST POSITION STATE``  -> ``{"ok": true}`` or ``{"error": reason}``
- ``close``                      -> ``{"ok": true}`` and the process exits
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.config import WriterSpec  # noqa: E402
from router.features.writers.base import WriterBackendError  # noqa: E402
from router.features.writers.postgresql import PostgresqlBackend  # noqa: E402
from router.features.writers.runner import ZoneView  # noqa: E402

ZONE = ("master1", "master2")


def reply(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def main(dsn: str, node: str, failover: float, timeout: float) -> None:
    spec = WriterSpec(name="pg", type="postgresql", dsn=dsn, failover_timeout=failover,
                      timeout=timeout)
    backend = PostgresqlBackend(spec, node, ZoneView(node, ZONE), lambda reason: None)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command, *args = line.split()
        try:
            if command == "open":
                await backend.open()
                reply({"ok": True})
            elif command == "role":
                reply({"active": await backend.holds_role(time.time())})
            elif command == "write":
                host, position, state = args[0], int(args[1]), int(args[2])
                record = {"host": host, "cr": {"state": state, "output": f"from {node}",
                                               "execution_end": time.time()}}
                await backend.write([(position, record)])
                reply({"ok": True})
            elif command == "close":
                await backend.close()
                reply({"ok": True})
                break
        except WriterBackendError as e:
            reply({"error": e.reason, "message": str(e)})
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]),
                     float(sys.argv[4]) if len(sys.argv) > 4 else 5.0))
