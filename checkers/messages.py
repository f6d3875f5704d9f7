"""Check requests, results, and the Icinga ``cr`` dictionary built from a result.

* :class:`CheckRequest`: what to run (an argv, or an internal command such as
  ``dummy``), with environment, timeout and output cap. :meth:`Catalog.build
  <checkers.catalog.Catalog.build>` makes one from a command name and macros.
* :class:`PluginResult`: what one run produced (executor side, :mod:`checkers.runner`).
* :class:`CheckOutcome`: the result the pool hands back to the router: a
  :class:`PluginResult` plus the command line, the state, and the executor bookkeeping
  (queue wait, which executor). Executor failures (lost, queue full, shut down) are
  outcomes too, with ``error`` set.
* :func:`outcome_to_cr`: the serialised ``CheckResult`` of Icinga 2.13
  (``lib/icinga/checkresult.ti``), keys in Icinga's (sorted) order, ``performance_data``
  always present (a receiver ignores a ``cr`` without it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from checkers.output import STATE_UNKNOWN, exit_status_to_state

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_TIMEOUT",
    "CheckRequest",
    "PluginResult",
    "CheckOutcome",
    "outcome_to_cr",
    "rebuilt_output",
]

DEFAULT_OUTPUT_LIMIT = 1 << 20
"""Bytes of plugin output kept (stdout and stderr together); the rest is discarded."""

DEFAULT_TIMEOUT = 60.0
"""Icinga's default ``Command.timeout`` (``lib/icinga/command.ti``)."""

#: Exit status Icinga reports for a process it could not start, killed after a timeout,
#: or that died from a signal (``lib/base/process.cpp``).
EXIT_PROCESS_FAILED = 128


@dataclass(slots=True, frozen=True)
class CheckRequest:
    """One check to run.

    Exactly one of ``argv`` (a plugin command line, ``argv[0]`` the program) and
    ``internal`` (the name of a command run in-process, only ``"dummy"`` so far) is set.
    """

    argv: tuple[str, ...] = ()
    internal: str | None = None
    macros: Mapping[str, Any] = field(default_factory=dict)
    """Resolved macros of an internal command (``dummy_state``, ``dummy_text``)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for the plugin, on top of ``PATH`` and ``LANG=C``."""
    timeout: float = DEFAULT_TIMEOUT
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    command: str | None = None
    """Name of the check command it was built from (for logs and internal commands)."""
    not_after: float | None = None
    """Wall-clock time after which it is not started (an API execution's deadline): the
    pool answers it ``expired`` instead when it waited in the queue past it."""

    def __post_init__(self) -> None:
        if bool(self.argv) == (self.internal is not None):
            raise ValueError("a CheckRequest needs exactly one of argv and internal")
        if not isinstance(self.argv, tuple):
            object.__setattr__(self, "argv", tuple(self.argv))

    @property
    def command_line(self) -> list[str] | str | None:
        """The ``command`` of the check result: the argv, or the command name (Icinga)."""
        if self.internal is not None:
            return self.command or self.internal
        return list(self.argv)


@dataclass(slots=True)
class PluginResult:
    """What one plugin run produced; ``output`` and ``performance_data`` already parsed."""

    exit_status: int
    output: str
    performance_data: list[str]
    execution_start: float
    execution_end: float
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None
    """Set when the plugin could not be run at all (spawn failure) or the request was bad."""
    raw_output: str | None = None
    """The output as the plugin wrote it (trailing white space trimmed) when ``output``
    and ``performance_data`` do not give it back (``rebuilt_output``): multi-line output
    with performance data on its first line. ``event::ExecutedCommand`` sends it as
    Icinga does."""

    @property
    def state(self) -> int:
        return exit_status_to_state(self.exit_status)


def rebuilt_output(output: str, performance_data: list[str]) -> str:
    """``output|perfdata``: the plugin's output again whenever it had its performance
    data at the end (``PluginResult.raw_output`` holds it when not)."""
    return f"{output}|{' '.join(performance_data)}" if performance_data else output


@dataclass(slots=True)
class CheckOutcome:
    """The result of a :class:`CheckRequest` as the pool returns it."""

    exit_status: int
    state: int
    output: str
    performance_data: list[str]
    execution_start: float
    execution_end: float
    command: list[str] | str | None = None
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None
    """``None`` for a plugin that ran (whatever its state); else a short token such as
    ``"executor lost"``, ``"check queue full"``, ``"shutdown"``, ``"spawn failed: ..."``."""
    queue_wait: float = 0.0
    """Seconds the check waited for a free slot before it was sent to an executor."""
    executor: int | None = None
    """Index of the executor that ran it (``None``: in-process or never dispatched)."""
    raw_output: str | None = None
    """See ``PluginResult.raw_output``."""

    @classmethod
    def from_result(cls, result: PluginResult, command: list[str] | str | None, *,
                    queue_wait: float = 0.0, executor: int | None = None) -> CheckOutcome:
        return cls(result.exit_status, exit_status_to_state(result.exit_status),
                   result.output, result.performance_data, result.execution_start,
                   result.execution_end, command, result.timed_out, result.truncated,
                   result.error, queue_wait, executor, result.raw_output)

    @classmethod
    def unknown(cls, output: str, *, error: str, now: float,
                command: list[str] | str | None = None, queue_wait: float = 0.0,
                executor: int | None = None) -> CheckOutcome:
        """An UNKNOWN outcome for a check the executors could not run to the end."""
        return cls(STATE_UNKNOWN, STATE_UNKNOWN, output, [], now, now, command,
                   error=error, queue_wait=queue_wait, executor=executor)


def outcome_to_cr(outcome: CheckOutcome, *, check_source: str, schedule_start: float,
                  schedule_end: float, is_host: bool = False,
                  vars_before: dict[str, Any] | None = None,
                  vars_after: dict[str, Any] | None = None,
                  scheduling_source: str | None = None, ttl: float = 0,
                  active: bool = True) -> dict[str, Any]:
    """The ``cr`` dictionary of an ``event::CheckResult`` for ``outcome``.

    ``state`` is the *service* state (0..3) for hosts too: Icinga's ``CheckResult``
    stores a ``ServiceState`` (``checkresult.ti``), the plugin task sets it from the exit
    code the same way for hosts and services (``pluginchecktask.cpp``), and the receiver
    derives UP/DOWN with ``Host::CalculateState`` (OK/WARNING up, else down) when it
    processes the result (``checkable-check.cpp``). Sending 1 for a DOWN host would read
    as WARNING, i.e. UP. ``is_host`` is accepted for the callers' clarity and changes
    nothing in the dictionary.

    ``scheduling_source`` defaults to ``check_source``: an Icinga agent running a check
    for its parent sets both to its own name. ``vars_before``/``vars_after`` stay
    ``None`` for such results (the agent returns them before it fills these in).
    ``previous_hard_state`` is 0, as in the results of an agent.
    """
    del is_host     # see the docstring: the state is a ServiceState for hosts too
    performance_data = outcome.performance_data
    return {
        "active": active,
        "check_source": check_source,
        "command": outcome.command,
        "execution_end": outcome.execution_end,
        "execution_start": outcome.execution_start,
        "exit_status": outcome.exit_status,
        "output": outcome.output,
        "performance_data": list(performance_data) if performance_data else [],
        "previous_hard_state": 0,
        "schedule_end": schedule_end,
        "schedule_start": schedule_start,
        "scheduling_source": check_source if scheduling_source is None else scheduling_source,
        "state": outcome.state,
        "ttl": ttl,
        "type": "CheckResult",
        "vars_after": vars_after,
        "vars_before": vars_before,
    }
