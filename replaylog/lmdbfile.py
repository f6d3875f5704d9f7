"""Checks of an LMDB data file that LMDB itself does not make, shared by every LMDB store
of the node (the replay log here, the writers' queue in ``router.features.writers``).

Why: LMDB maps the file and trusts it. A file cut short (a full disk while copying a
backup, a bad restore) opens without an error, and the first read of a page beyond its
end kills the process with SIGBUS: no exception, no log line, and a node that dies again
at every restart. So a store checks the file's size before it opens it (both meta pages
there) and after (every page the meta page names is there), and tells damaged files
(``CORRUPTION``) from full, busy or misused ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import lmdb

__all__ = ["CORRUPTION", "aside_name", "describe", "problem_after_open",
           "problem_before_open"]

#: LMDB errors that mean the files are damaged (as opposed to full, busy or misused).
CORRUPTION = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError,
              lmdb.VersionMismatchError, lmdb.PanicError, lmdb.BadChecksumError,
              lmdb.IncompatibleError)

#: LMDB writes both meta pages (one 4 KiB page each on Linux) when it creates a file.
_META_BYTES = 2 * 4096


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def problem_before_open(data_file: Path) -> str | None:
    """What is wrong with ``data_file`` before LMDB may map it, or None (also when it
    does not exist yet). Raises OSError when it cannot be looked at."""
    try:
        size = data_file.stat().st_size
    except FileNotFoundError:
        return None
    if size < _META_BYTES:
        return f"the file is {size} bytes, shorter than LMDB's two meta pages"
    return None


def problem_after_open(env: lmdb.Environment, data_file: Path) -> str | None:
    """What is wrong with the open ``env``'s ``data_file``, or None: a file shorter than
    the pages its meta page names was truncated (reading those pages would be SIGBUS)."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    actual = data_file.stat().st_size
    if actual < needed:
        return f"the file is {actual} bytes but its pages reach {needed}: it was truncated"
    return None


def aside_name(path: Path) -> Path:
    """Where a broken store at ``path`` is moved aside: ``<name>.broken-<unix time>``, with
    ``-N`` appended when that exists (nothing is deleted: its records may matter)."""
    stamp = int(time.time())
    moved = path.with_name(f"{path.name}.broken-{stamp}")
    n = 0
    while moved.exists():
        n += 1
        moved = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    return moved
