"""Exceptions of the replay log.

::

    ReplayLogError                      the replay log cannot do what was asked
    ├── ReplayLogCorrupt                the LMDB files are damaged or truncated (at open)
    ├── ReplayLogBusy                   another process holds the log open for writing
    ├── ReplayLogDiskFull               the disk is full even after evicting old records
    └── InvalidState(AssertionError)    called in a state where it makes no sense (a bug)

``replaylog`` never imports ``router`` (the layer rule in pyproject.toml): its root is its
own, and the router's CLI catches it beside ``router.errors.RouterError``.

A full LMDB *map* is not an error: the store grows the map or evicts the oldest records
and carries on (see ``replaylog/README.md``). Programming errors (using a closed store,
or a store across ``fork()``) raise :class:`InvalidState`.
"""

from __future__ import annotations

from pathlib import Path

#: Directory name of the replay log inside the node's data directory.
DIRNAME = "replaylog"


def recovery_command(path: str | Path) -> str:
    """The documented command that moves a broken log at ``path`` aside."""
    path = Path(path)
    if path.name == DIRNAME:
        return f"router replaylog reset --data-dir {path.parent}"
    # Not in the standard place: the CLI cannot derive it from a data dir.
    return (f"router replaylog reset --data-dir DIR (or, from Python, "
            f"replaylog.reset({str(path)!r}))")


class ReplayLogError(Exception):
    """Root of the replay log's exceptions."""


class ReplayLogCorrupt(ReplayLogError):
    """The environment at ``path`` cannot be used: not LMDB, damaged pages, truncated.

    The message names the data file and the recovery command. Nothing is repaired
    automatically: the messages in the file may still matter to someone.
    """

    def __init__(self, path: str | Path, detail: str) -> None:
        self.path = Path(path)
        self.data_file = self.path / "data.mdb"
        self.detail = detail
        super().__init__(
            f"replay log {self.data_file} is corrupt or truncated ({detail}); "
            f"move it aside and start an empty log with: {recovery_command(self.path)}")


class ReplayLogBusy(ReplayLogError):
    """Another process (or another store in this one) has the log open for writing."""


class ReplayLogDiskFull(ReplayLogError):
    """The file system is full: the batch was not stored even after evicting records."""


class InvalidState(ReplayLogError, AssertionError):
    """A method was called in a state where it makes no sense (closed, read-only, after
    ``fork()``, from the writer thread): a programming error."""
