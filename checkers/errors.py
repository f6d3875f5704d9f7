"""Exceptions of the check executors.

::

    CheckerError                        root of everything raised by ``checkers``
    ├── CatalogError(ValueError)        a command catalog file is unusable (file, key)
    ├── UnknownCommand(KeyError)        ``Catalog.build`` was asked for a command it lacks
    ├── MacroError                      a command line cannot be built from the macros
    │   └── MacroMissing                a required macro has no value
    ├── PoolStartError                  the executor processes did not come up
    ├── WireError                       the executor socket protocol was violated
    └── InvalidState(AssertionError)    called in a state where it makes no sense (a bug)

``checkers`` never imports ``router`` (the layer rule in pyproject.toml): its root is its
own, and the router's CLI catches it beside ``router.errors.RouterError``.

Problems of a *plugin* (missing, not executable, timed out, killed, crashed) are never
exceptions: they come back as UNKNOWN results, the way Icinga reports them. Problems of
the executors (one died with checks in flight, the queue overflowed) are results too:
every check handed to the pool gets exactly one result.
"""

from __future__ import annotations

__all__ = [
    "CheckerError",
    "CatalogError",
    "UnknownCommand",
    "MacroError",
    "MacroMissing",
    "PoolStartError",
    "WireError",
    "InvalidState",
]


class CheckerError(Exception):
    """Root of every exception the check executors raise on purpose."""


class CatalogError(CheckerError, ValueError):
    """A command catalog (TOML) is malformed; ``path`` and ``key`` say where."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.message = message
        self.path = path
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<catalog>"
        key = f" [{self.key}]" if self.key else ""
        return f"{where}:{key} {self.message}"


class UnknownCommand(CheckerError, KeyError):
    """No check command of that name in the catalog.

    The text is Icinga's answer to an ``event::ExecuteCommand`` for a command it does not
    know (``clusterevents-check.cpp``): "Check command '<name>' does not exist."
    """

    def __init__(self, command: str) -> None:
        self.command = command
        super().__init__(command)

    def __str__(self) -> str:
        return f"Check command '{self.command}' does not exist."


class MacroError(CheckerError):
    """The macros cannot be turned into a command line (bad mix of types, recursion)."""


class MacroMissing(MacroError):
    """A macro needed by a required argument (or by the command line itself) is missing.

    ``macro`` is the macro name as written between the ``$`` signs, ``argument`` the
    argument that needed it (``None`` for the command line). The text follows Icinga's
    ``MacroProcessor::ResolveArguments``: "Non-optional macro 'X' used in argument 'Y' is
    missing."
    """

    def __init__(self, macro: str, *, argument: str | None = None,
                 command: str | None = None) -> None:
        self.macro = macro
        self.argument = argument
        self.command = command
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.argument is not None:
            return (f"Non-optional macro '{self.macro}' used in argument '{self.argument}' "
                    f"is missing.")
        return f"Macro '{self.macro}' used in the command line is missing."


class PoolStartError(CheckerError):
    """The executor processes could not be started or did not connect in time."""


class WireError(CheckerError):
    """A frame on the executor socket is not a valid request or reply."""


class InvalidState(CheckerError, AssertionError):
    """A pool method was called in a state where it makes no sense: a programming error."""
