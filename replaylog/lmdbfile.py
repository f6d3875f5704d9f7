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

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

__all__ = ["CORRUPTION", "aside_name", "describe", "open_checked", "problem_before_open"]

#: LMDB errors that mean the files are damaged (as opposed to full, busy or misused).
CORRUPTION = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError,
              lmdb.VersionMismatchError, lmdb.PanicError, lmdb.BadChecksumError,
              lmdb.IncompatibleError)

#: The longest a short file's pages are checked for, s (only when the file is short).
WALK_TIMEOUT = 600.0

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


def open_checked(directory: Path, open_env: Callable[[], lmdb.Environment]
                 ) -> tuple[lmdb.Environment | None, str | None]:
    """``open_env()`` (an ``lmdb.open`` of ``directory``), checked: ``(env, None)``, or
    ``(None, what is wrong)`` with nothing left open. Raises what ``open_env`` raises.

    A file shorter than the pages its meta page names was cut short, or not: LMDB does
    not write the pages a transaction allocated and freed again ("loose" pages, free
    from then on), so after a large transaction that appended and evicted a clean queue
    was refused as truncated at the next start (review). So a short file has every tree
    walked, in a process of its own (in a file really cut short, reading a missing page
    is SIGBUS, which kills the walker, not us), with the environment closed meanwhile
    (``router writers reset`` must find it free); an undamaged one is opened again."""
    data_file = directory / "data.mdb"
    env = open_env()
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        walked = data_file.stat()
        map_size = env.info()["map_size"]
    except BaseException:
        env.close()
        raise
    actual = walked.st_size
    if actual >= needed:
        return env, None
    env.close()
    failed = _walk_fails(directory, map_size)
    if failed is None:
        return open_env(), None
    if _identity(data_file) != (walked.st_dev, walked.st_ino):
        # Moved aside while it was walked (``router writers reset``): what is there now
        # is another file, checked from the start.
        return open_checked(directory, open_env)
    return None, (f"the file is {actual} bytes but its pages reach {needed}, and {failed}: "
                  "it was truncated")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


#: Reads every key and value of the main database and of every named database in it:
#: branch, leaf and overflow pages (keys alone left a file cut inside the overflow pages
#: of large values to kill the store at its first read: review).
_WALK = """
import sys, lmdb
env = lmdb.open(sys.argv[1], map_size=int(sys.argv[2]), subdir=True, readonly=True,
                lock=False, max_dbs=1024)
with env.begin() as txn:
    names = [key for key, _ in txn.cursor()]
    for name in names:
        try:
            db = env.open_db(name, txn=txn, create=False)
        except (lmdb.IncompatibleError, lmdb.DbsFullError, lmdb.NotFoundError):
            continue
        for _ in txn.cursor(db):
            pass
"""


def _walk_fails(directory: Path, map_size: int) -> str | None:
    """Why walking the trees of the LMDB environment in ``directory`` failed, or None."""
    try:
        done = subprocess.run([sys.executable, "-c", _WALK, str(directory), str(map_size)],
                              capture_output=True, timeout=WALK_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"its pages could not be checked ({e})"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"reading its pages ends in {signal.Signals(-done.returncode).name}"
    tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return f"reading its pages fails ({tail[0].split(':', 1)[0][:80]})"


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
