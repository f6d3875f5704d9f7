"""Running ``event::ExecuteCommand`` from a parent (Icinga's command_endpoint).

A parent that schedules a check with ``command_endpoint`` set to this node sends the command
name and the macros it resolved. Like an Icinga agent, we build the command line from our
own catalog (same command and macro names as Icinga's template library), run it on the
checker pool (never in the router process: a slow plugin must not stall routing), and
answer directly to the requesting endpoint, without ``ts``:

- a scheduled check gets ``event::CheckResult`` (host, service, cr) with
  ``check_source`` = this node;
- an API execution (``source`` set) gets ``event::ExecutedCommand`` with the exit code and
  the raw output; one whose ``deadline`` has passed is dropped, as Icinga drops it.

What Icinga answers for an unknown command or a missing macro is an UNKNOWN result with
its text; so do we (lib/icinga/clusterevents-check.cpp).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from checkers.catalog import Catalog
from checkers.errors import MacroError, UnknownCommand
from checkers.messages import CheckOutcome, outcome_to_cr, rebuilt_output
from checkers.pool import CheckerPool
from router.protocol import jsonrpc

log = logging.getLogger("router.execution")


class CommandExecutor:
    """Turns an ExecuteCommand into a pool run and the answer message."""

    def __init__(self, node_name: str, pool: CheckerPool, catalog: Catalog | None = None,
                 plugin_dir: str = "/usr/lib/nagios/plugins") -> None:
        self.node_name = node_name
        self.pool = pool
        self.catalog = catalog or Catalog.load()
        self.plugin_dir = plugin_dir
        self.executed = 0
        self.expired = 0

    async def execute(self, params: dict[str, Any], requester: str) -> bytes | None:
        """The JSON payload to send back to ``requester``, or None when nothing is due."""
        now = time.time()
        command = params.get("command")
        host = params.get("host") if isinstance(params.get("host"), str) else ""
        service = params.get("service") if isinstance(params.get("service"), str) else None
        if "source" in params:
            deadline = params.get("deadline")
            if isinstance(deadline, (int, float)) and now > deadline:
                self.expired += 1
                log.info("[%s] discarding execute-command for %s: its deadline has passed",
                         requester, host)
                return None
        command_type = params.get("command_type", "check_command")
        if command_type not in ("check_command", "event_command"):
            log.warning("[%s] not running %s %r: only check and event commands are "
                        "executed here", requester, command_type, command)
            return None
        deadline = params.get("deadline") if "source" in params else None
        outcome = await self._run(command, params, command_type,
                                  deadline if isinstance(deadline, (int, float)) else None)
        if outcome.error == "expired":
            self.expired += 1
            log.info("[%s] discarding execute-command for %s: its deadline passed while it "
                     "waited for an executor", requester, host)
            return None
        self.executed += 1
        if command_type == "event_command" and "source" not in params:
            # A scheduled event handler: Icinga runs it and answers nothing.
            log.info("[%s] event command %r for %s exited %d", requester, command,
                     host, outcome.exit_status)
            return None
        if "source" in params:
            # As the plugin wrote it, as Icinga sends it (rebuilt when that is the same).
            output = outcome.raw_output if outcome.raw_output is not None \
                else rebuilt_output(outcome.output, outcome.performance_data)
            answer: dict[str, Any] = {
                "end": outcome.execution_end, "execution": params.get("source"),
                "exit": outcome.exit_status, "host": host, "output": output,
                "start": outcome.execution_start}
            if service is not None:
                answer["service"] = service
            return jsonrpc.notification("event::ExecutedCommand", answer)
        cr = outcome_to_cr(outcome, check_source=self.node_name, schedule_start=now,
                           schedule_end=outcome.execution_end)
        result: dict[str, Any] = {"cr": cr, "host": host}
        if service is not None:
            result["service"] = service
        return jsonrpc.notification("event::CheckResult", result)

    async def _run(self, command: Any, params: dict[str, Any],
                   command_type: str = "check_command",
                   deadline: float | None = None) -> CheckOutcome:
        macros = params.get("macros")
        timeout = _seconds(params.get("check_timeout"))
        kind = "Event" if command_type == "event_command" else "Check"
        try:
            if not isinstance(command, str):
                raise UnknownCommand(f"{kind} command '{command}' does not exist.")
            request = self.catalog.build(
                command, macros if isinstance(macros, dict) else {}, plugin_dir=self.plugin_dir,
                use_defaults=True, literal_macros=True,
                timeout=timeout)
        except UnknownCommand:
            return CheckOutcome.unknown(f"{kind} command '{command}' does not exist.",
                                        error="unknown command", now=time.time())
        except MacroError as exc:
            return CheckOutcome.unknown(str(exc), error="macro", now=time.time(),
                                        command=command)
        if deadline is not None:
            request = dataclasses.replace(request, not_after=float(deadline))
        return await self.pool.run(request)


def _seconds(value: Any) -> float | None:
    """``check_timeout`` as Icinga's agent reads it: a number, or a string of one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds > 0 else None
    return None
