"""Messages a node originates in answer to a peer (not relayed traffic).

Kept apart from the node so the exact shapes, which real Icinga 2 nodes parse, can be
tested on their own. Shapes follow Icinga 2.13's ``MakeCheckResultMessage`` and
``SendEventExecutedCommand`` (lib/icinga/clusterevents*.cpp): a result always carries
``performance_data`` (Icinga stores an empty result when that key is missing).
"""

from __future__ import annotations

from typing import Any, Final

from router.protocol import jsonrpc

STATE_UNKNOWN: Final = 3
#: Exit code Icinga reports for API executions a node refuses to run.
EXIT_NOT_ACCEPTED: Final = 126


def check_result(host: str, service: str | None, *, state: int, output: str, now: float,
                 check_source: str, exit_status: int | None = None) -> dict[str, Any]:
    """``params`` of an ``event::CheckResult`` produced by this node."""
    cr = {
        "active": True,
        "check_source": check_source,
        "command": None,
        "execution_end": now,
        "execution_start": now,
        "exit_status": state if exit_status is None else exit_status,
        "output": output,
        "performance_data": [],
        "schedule_end": now,
        "schedule_start": now,
        "scheduling_source": check_source,
        "state": state,
        "ttl": 0,
        "type": "CheckResult",
        "vars_after": None,
        "vars_before": None,
    }
    params: dict[str, Any] = {"cr": cr, "host": host}
    if service is not None:
        params["service"] = service
    return params


def refuse_execute_command(request: dict[str, Any], *, endpoint_name: str, output: str,
                           now: float) -> bytes:
    """Answer to an ``event::ExecuteCommand`` this node will not run.

    API executions (``source`` set) get ``event::ExecutedCommand`` with exit 126; checks
    scheduled through ``command_endpoint`` get an UNKNOWN ``event::CheckResult``. Both go
    straight back to the requesting endpoint without ``ts``, as Icinga sends them.
    """
    host = request.get("host")
    service = request.get("service")
    if not isinstance(host, str):
        host = ""
    if "source" in request:
        params: dict[str, Any] = {
            "end": now,
            "execution": request.get("source"),
            "exit": EXIT_NOT_ACCEPTED,
            "host": host,
            "output": output,
            "start": now,
        }
        if isinstance(service, str):
            params["service"] = service
        return jsonrpc.notification("event::ExecutedCommand", params)
    return jsonrpc.notification(
        "event::CheckResult",
        check_result(host, service if isinstance(service, str) else None,
                     state=STATE_UNKNOWN, output=output, now=now, check_source=endpoint_name))
