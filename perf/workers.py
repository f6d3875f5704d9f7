"""The pipe between the main process and its load processes, both ends.

In a load process: :func:`pipe_commands` turns the pipe into an asyncio queue of
commands, :func:`close_agents` closes the sessions and answers ``("closed",)``. In the
main process: :func:`recv_from` awaits an answer, :func:`stop_workers` closes and joins
them all.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["close_agents", "pipe_commands", "recv_from", "stop_workers"]


async def close_agents(agents: list[Any], conn: Any) -> None:
    """Close every agent's session, then tell the main process (``("closed",)``)."""
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
    try:
        conn.send(("closed",))
    except OSError:
        pass             # the main process is gone already


def pipe_commands(conn: Any, close: Any, is_close: Any) -> asyncio.Queue[Any]:
    """Commands from the main process's pipe, as an asyncio queue of the running loop.

    A daemon thread blocks in ``conn.recv()``; a closed pipe counts as ``close``, and
    the thread ends after the first command ``is_close`` accepts.
    """
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def pump() -> None:
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                cmd = close
            loop.call_soon_threadsafe(commands.put_nowait, cmd)
            if is_close(cmd):
                return

    threading.Thread(target=pump, daemon=True).start()
    return commands


async def recv_from(conn: Any, timeout: float) -> Any:
    """Receive from a load process's pipe without blocking the loop."""
    def get() -> Any:
        if not conn.poll(timeout):
            raise TimeoutError("load process did not answer")
        return conn.recv()
    return await asyncio.to_thread(get)


async def stop_workers(workers: list[tuple[Any, Any, Any]], close_message: Any,
                       timeout: float) -> None:
    """Ask every load process to close, wait for its answer, then join (or terminate)."""
    for _, pipe, _ in workers:
        try:
            pipe.send(close_message)
        except OSError:
            pass
    for proc, pipe, _ in workers:
        try:
            await recv_from(pipe, timeout)
        except (TimeoutError, EOFError, OSError):
            pass
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
