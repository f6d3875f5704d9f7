"""Command execution bookkeeping: ``event::ExecuteCommand`` and ``event::ExecutedCommand``.

Two roles meet here:

- as the *command endpoint* of a parent, a node runs ``event::ExecuteCommand`` on its
  executor (``router.features.commands``) when ``accept_commands`` is on, and answers
  directly to the requester; with commands off it answers the way Icinga does;
- as a *relay* of an API execution (``source`` set), the node remembers who asked, so that
  the ``event::ExecutedCommand`` coming back is sent to the requester directly, like
  Icinga does; the record expires ``EXECUTION_GRACE`` seconds after the deadline.

An answer is bound to where the command went (issue 16 S4): the node remembers the zones
on the path from its own zone down to the target endpoint's zone, and takes an
``event::ExecutedCommand`` for that execution id only from an endpoint of one of them (the
child it relayed to, that child's HA peer, or the target itself). Anybody else who knows or
guesses the id (another agent, a sibling zone) is refused ``wrong_endpoint`` and counted,
and the execution keeps waiting for its real answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from router.node.context import NodeContext
from router.node.receipts import ORIGIN_KEY
from router.protocol import answers, jsonrpc, netstring

if TYPE_CHECKING:  # pragma: no cover
    from router.features.commands import CommandExecutor
    from router.node.stats import Connection

log = logging.getLogger("router.node")

CHECK_RESULT = "event::CheckResult"
EXECUTED_COMMAND = "event::ExecutedCommand"
#: How long a relayed API execution waits for its event::ExecutedCommand.
EXECUTION_GRACE = 600.0
MAX_PENDING_EXECUTIONS = 100_000


class ExecutionHost(NodeContext, Protocol):
    """What the execution bookkeeping needs from the node."""

    @property
    def executor(self) -> CommandExecutor | None:
        """Set by the service when accept_commands is on."""

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool: ...

    def refuse(self, conn: Connection, method: str, reason: str, text: str,
               msg: jsonrpc.Message | None = None) -> None: ...


class Executions:
    """Runs or refuses a parent's commands; routes relayed executions' answers back."""

    def __init__(self, host: ExecutionHost) -> None:
        self.host = host
        #: execution id (the request's ``source``) -> (requester, expiry wall-clock time,
        #: the zone it was relayed towards: ``may_answer`` tells who may answer it)
        self.pending: dict[str, tuple[str, float, str | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def execute(self, conn: Connection, params: dict[str, Any]) -> None:
        """A parent asks us to run a check (command_endpoint) or an API execution."""
        host = self.host
        if host.config.node.accept_commands and host.executor is not None:
            task = host.loop.create_task(self._run(conn.endpoint or "", params))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        # Commands off: answer the way Icinga does, so the parent records UNKNOWN / exit
        # 126 instead of waiting for a result that never comes.
        output = f"Endpoint '{host.name}' does not accept commands."
        host.ratelog.log((conn.endpoint, "execute"), logging.WARNING,
                         "[%s %s] not executing command %r for %s: %s", conn.endpoint,
                         conn.address, params.get("command"), params.get("host"), output)
        frame = netstring.encode(answers.refuse_execute_command(
            params, endpoint_name=host.name, output=output, now=time.time()))
        method = EXECUTED_COMMAND if "source" in params else CHECK_RESULT
        host.send_to(conn.endpoint or "", frame, method)

    async def _run(self, requester: str, params: dict[str, Any]) -> None:
        host = self.host
        executor = host.executor
        assert executor is not None
        try:
            payload = await executor.execute(params, requester)
        except Exception:  # a bug here must not take the node down
            log.exception("[%s] executing %r failed", requester, params.get("command"))
            return
        if payload is None:
            return
        method = EXECUTED_COMMAND if "source" in params else CHECK_RESULT
        if not host.send_to(requester, netstring.encode(payload), method):
            log.warning("[%s] result of %r dropped: the requester is no longer connected",
                        requester, params.get("command"))

    def answer_zones(self, target_zone: str | None) -> list[str]:
        """The zones an answer for a command relayed towards ``target_zone`` may come
        from: that zone and its ancestors below our own zone (the path it went down), and
        our own zone when it has other endpoints: a member that is not the zone's routing
        master relays the command to the master, whose answer comes back through it
        (review). For the refusal's log line; the check itself is ``may_answer``."""
        topology = self.host.topology
        local = topology.local_zone
        if target_zone is None or target_zone == local:
            return [local]
        below = [z for z in (target_zone, *topology.ancestors(target_zone))
                 if topology.is_ancestor(local, z)]
        zone = topology.zone(local)
        return [*below, local] if zone is not None and len(zone.endpoints) > 1 else below

    def may_answer(self, sender_zone: str | None, target_zone: str | None) -> bool:
        """Whether an endpoint of ``sender_zone`` may answer a command relayed towards
        ``target_zone``: ``sender_zone`` is on ``answer_zones(target_zone)``.

        Asked when the answer comes, with nothing kept per execution or zone but the
        target zone's name: each execution is kept ``EXECUTION_GRACE`` (11 minutes)
        after its deadline, and a set per record, then a cached one per target zone
        (5 000 agent zones), were the soak's growth (issue 21)."""
        return sender_zone is not None and sender_zone in self.answer_zones(target_zone)

    def remember(self, requester: str, params: dict[str, Any],
                 target_zone: str | None = None) -> None:
        """An ExecuteCommand relayed from ``requester`` towards ``target_zone``: keep who
        asked for an API execution (``source``), and from where its answer may come,
        until the answer comes back or it expires."""
        source = params.get("source")
        if not isinstance(source, str):
            return
        if len(self.pending) >= MAX_PENDING_EXECUTIONS:
            self.prune(force=True)
        deadline = params.get("deadline")
        expires = (float(deadline) if isinstance(deadline, (int, float)) else time.time()) \
            + EXECUTION_GRACE
        self.pending[source] = (requester, expires, target_zone)

    def executed(self, conn: Connection, msg: jsonrpc.Message) -> None:
        """The answer of a relayed execution: to its requester, or refused."""
        execution = (msg.params or {}).get("execution")
        if not isinstance(execution, str):
            execution = ""
        pending = self.pending.get(execution)
        if pending is None:
            self.host.refuse(conn, EXECUTED_COMMAND, "unknown_execution",
                             "no relayed execute-command request with this execution id", msg)
            return
        sender_zone = self.host.topology.zone_of(conn.endpoint or "")
        if not self.may_answer(sender_zone, pending[2]):
            # Not where the command went: a guessed or leaked id (issue 16 S4).
            self.host.refuse(conn, EXECUTED_COMMAND, "wrong_endpoint",
                             f"execution {execution[:64]!r} was sent towards zone(s) "
                             f"{', '.join(sorted(self.answer_zones(pending[2])))}, not to "
                             f"zone {sender_zone}", msg)
            return
        del self.pending[execution]
        # Sent directly to the requester, like Icinga (no ts: SyncSendMessage). Not the
        # child's bytes: a ts in them reached the requester as ours, and one far in the
        # future made it drop everything we sent after as stale (review).
        answer = {key: value for key, value in msg.data.items()
                  if key not in ("ts", ORIGIN_KEY)}
        if not self.host.send_to(pending[0], netstring.encode(orjson.dumps(answer)),
                                 EXECUTED_COMMAND):
            self.host.refuse(conn, EXECUTED_COMMAND, "unreachable",
                             f"requester {pending[0]} is not connected", msg)

    def prune(self, force: bool = False) -> None:
        """Forget expired executions, oldest first up to the first one still due; ``force``:
        also the oldest tenth when still full.

        They are kept in the order they came and expire in about that order (a deadline
        plus the same grace): a scan of all of them every second took 3.3 ms of the loop
        at the 100 000 cap, 4 % of the satellite's samples after commands to 10 000
        agents (issue 22 profile). One out of order is forgotten with the next ones, or
        by the forced tenth."""
        now = time.time()
        pending = self.pending
        expired = []
        for key, (_, expires, _) in pending.items():
            if expires >= now:
                break
            expired.append(key)
        for key in expired:
            del pending[key]
        if force and len(self.pending) >= MAX_PENDING_EXECUTIONS:
            for key in list(self.pending)[:MAX_PENDING_EXECUTIONS // 10]:
                del self.pending[key]


__all__ = ["EXECUTION_GRACE", "ExecutionHost", "Executions", "MAX_PENDING_EXECUTIONS"]
