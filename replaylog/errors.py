"""Exceptions of the replay log.

::

    RouterError                         (router.errors)
    └── ReplayLogError                  the replay log cannot do what was asked
        ├── ReplayLogCorrupt            the LMDB files are damaged or truncated (at open)
        ├── ReplayLogBusy               another process holds the log open for writing
        └── ReplayLogDiskFull           the disk is full even after evicting old records

A full LMDB *map* is not an error: the store grows the map or evicts the oldest records
and carries on (see ``replaylog/README.md``). Programming errors (using a closed store,
or a store across ``fork()``) raise ``router.errors.InvalidState``.
"""

from __future__ import annotations

from pathlib import Path

from router.errors import RouterError

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


class ReplayLogError(RouterError):
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
