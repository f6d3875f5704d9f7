"""File modes of the node's state: private directories, keys nobody else can read.

The data directory holds the node's private key, the CA key on the signing node,
certificate requests with their tickets, learned host owners and the replay log (check
results). Directories made with ``mkdir(..., parents=True)`` get ``0777 & ~umask`` for the
parents, so under ``umask 000`` the data directory became world-writable: anybody on the
host could swap the certificates. Icinga creates its own with fixed modes
(``certificate-requests`` 0700, ``api/log`` 0750). At start the node:

- creates ``DATA_DIR`` and its ``ca``, ``certs``, ``certificate-requests`` and ``objects``
  directories as 0700 whatever the umask, and tightens them to 0700 when they exist with
  group or other bits set (logged);
- refuses to run when the CA key or its own key is readable or writable by group or
  others, with an error that names the file and the ``chmod`` that fixes it: a key that
  others can read is a key that is no longer only ours.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from router.errors import DataDirError, TLSSetupError

__all__ = ["PRIVATE_DIRS", "check_key_modes", "check_writable", "ensure_private_dirs",
           "make_private_dir"]

log = logging.getLogger("router.node")

#: Sub-directories of DATA_DIR that hold secrets or per-peer state.
PRIVATE_DIRS = ("ca", "certs", "certificate-requests", "objects")


def make_private_dir(path: Path) -> bool:
    """Create ``path`` (and missing parents) as 0700 whatever the umask; tighten an
    existing one with group/other bits. True when its mode was changed or it was created."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
        os.chmod(directory, 0o700)
    if missing:
        return True
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)
        log.warning("%s had mode %04o; tightened to 0700 (it holds the node's private "
                    "state)", path, mode)
        return True
    return False


def check_writable(data_dir: str | os.PathLike[str]) -> None:
    """Refuse a data directory this process cannot write, before anything is written.

    Without the check a read-only data directory fails somewhere in the middle of the
    start (a ``chmod``, the CA, the replay log's lock file) with a bare ``OSError``.
    ``access(2)`` reports a read-only file system even to root; ``statvfs`` says which
    of the two it is. A directory that does not exist yet is judged by its nearest
    existing parent (it will be created there).

    Raises:
        DataDirError: names the directory and the reason.
    """
    root = Path(data_dir)
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "is on a read-only file system" if read_only else "is not writable by this user"
    problem = (f"data directory {root} {why}" if existing == root else
               f"data directory {root} cannot be created: {existing} {why}")
    raise DataDirError(f"{problem}; the node keeps its replay log, certificates and "
                       f"positions there (node.data_dir, --data-dir)")


def ensure_private_dirs(data_dir: str | os.PathLike[str]) -> None:
    """DATA_DIR and its private sub-directories exist with mode 0700 (raises
    ``DataDirError`` when the directory cannot be written)."""
    check_writable(data_dir)
    root = Path(data_dir)
    make_private_dir(root)
    for name in PRIVATE_DIRS:
        sub = root / name
        if sub.is_dir():
            make_private_dir(sub)


def check_key_modes(*keys: str | os.PathLike[str], refusing: str = "to start") -> None:
    """Refuse to start (or, ``refusing="the reload"``, to reload) when one of ``keys``
    (that exists) is open to group or others."""
    for key in keys:
        path = Path(key)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            raise TLSSetupError(
                f"private key {path} has mode {mode:04o}: group or others may read it. "
                f"Refusing {refusing}; fix it with: chmod 600 {path}")
