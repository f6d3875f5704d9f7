"""The synced zones on disk, in Icinga's layout, replaced atomically.

``DATA_DIR/api/zones/<zone>/<path>`` holds what Icinga's own nodes hold there
(``/_etc/hosts.conf``, ``.timestamp``, ``.checksums``). ``api/zones`` is a symlink to a
generation directory ``api/zones.<n>``: a new set of zones is written and flushed to a new
generation, marked complete, and published by replacing the symlink (``rename`` is
atomic). A crash or a full disk at any point leaves the previous complete set: at start
the symlink's target is used, or, when there is no symlink, the newest generation marked
complete; the rest is removed. A real ``api/zones`` directory (an Icinga node's data
directory) is read as it is and moved aside when we first write.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Mapping

from router.features.configsync.files import ZoneConfig, path_problem

log = logging.getLogger("router.configsync")

#: Written last into a generation directory: everything before it is on disk.
COMPLETE_MARKER = ".complete"


class ZoneStore:
    """Reads and atomically replaces the zones under ``API_DIR/zones``."""

    def __init__(self, api_dir: str) -> None:
        self.api_dir = api_dir
        self.link = os.path.join(api_dir, "zones")
        #: The thread removing the generation before the last ``replace``, if any.
        self.cleanup: threading.Thread | None = None

    # ------------------------------------------------------------------ reading

    def load(self) -> dict[str, ZoneConfig]:
        """The stored zones after recovering from an interrupted write (empty if none)."""
        current = self._recover()
        return read_zones(current) if current is not None else {}

    def peek(self) -> dict[str, ZoneConfig]:
        """The current set as it is on disk, without recovering or removing anything."""
        current = self.link if os.path.isdir(self.link) else None
        return read_zones(current) if current is not None else {}

    def _generations(self) -> list[tuple[int, str]]:
        found = []
        if os.path.isdir(self.api_dir):
            for entry in os.listdir(self.api_dir):
                prefix, _, number = entry.partition(".")
                if prefix == "zones" and number.isdigit():
                    found.append((int(number), os.path.join(self.api_dir, entry)))
        return sorted(found)

    def _recover(self) -> str | None:
        """The directory of the current set; removes unfinished and superseded ones."""
        generations = self._generations()
        current: str | None = None
        if os.path.islink(self.link):
            target = os.path.realpath(self.link)
            current = target if os.path.isdir(target) else None
        elif os.path.isdir(self.link):
            current = self.link
        else:
            complete = [path for _, path in generations
                        if os.path.exists(os.path.join(path, COMPLETE_MARKER))]
            if complete:
                current = complete[-1]
                self._publish(current)
                log.warning("config sync: recovered zones from %s after an interrupted "
                            "update", current)
        for _, path in generations:
            if current is None or os.path.realpath(path) != os.path.realpath(current):
                shutil.rmtree(path, ignore_errors=True)
        return current

    # ------------------------------------------------------------------ writing

    def replace(self, zones: Mapping[str, ZoneConfig],
                stored: Mapping[str, ZoneConfig] | None = None) -> None:
        """Make ``zones`` the stored set, all or nothing; raises ``OSError`` (disk full).

        ``stored``: the set stored now. A zone whose files are the same is linked from
        the current generation (already on disk) instead of written and synced again,
        file by file: with 2 000 agent zones and one changed file, the rewrite held the
        event loop for about five seconds (review)."""
        os.makedirs(self.api_dir, mode=0o700, exist_ok=True)
        generations = self._generations()
        number = generations[-1][0] + 1 if generations else 1
        target = os.path.join(self.api_dir, f"zones.{number}")
        current = os.path.realpath(self.link) if os.path.islink(self.link) else None
        try:
            os.mkdir(target, 0o700)
            for zone in zones.values():
                old = stored.get(zone.name) if stored is not None else None
                same = current is not None and old is not None and old.files == zone.files
                for path, content in zone.files.items():
                    if path_problem(path) is not None or "/" in zone.name:
                        raise ValueError(f"unsafe path {zone.name!r} {path!r}")
                    destination = os.path.join(target, zone.name, path[1:])
                    if same and current is not None and self._link(
                            os.path.join(current, zone.name, path[1:]), destination):
                        continue
                    self.write_file(destination, content.encode("utf-8"))
            self.write_file(os.path.join(target, COMPLETE_MARKER), b"")
            sync_dir(target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        previous = os.path.realpath(self.link) if os.path.lexists(self.link) else None
        if previous is not None and not os.path.islink(self.link):
            # An Icinga-made directory: moved aside (it stays complete) and removed.
            # (``load`` removed every other generation, so zones.0 is free.)
            aside = os.path.join(self.api_dir, "zones.0")
            self.write_file(os.path.join(self.link, COMPLETE_MARKER), b"")
            os.rename(self.link, aside)
            previous = aside
        self._publish(target)
        if previous is not None and os.path.realpath(previous) != os.path.realpath(target):
            # Removing thousands of zone directories took most of a second in the loop;
            # the generation is unused from here on (``load`` removes leftovers).
            self.cleanup = threading.Thread(
                target=shutil.rmtree, args=(previous,), kwargs={"ignore_errors": True},
                name="configsync-cleanup", daemon=True)
            self.cleanup.start()

    def _publish(self, target: str) -> None:
        temporary = self.link + ".new"
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.symlink(os.path.basename(target), temporary)
        os.replace(temporary, self.link)
        sync_dir(self.api_dir)

    @staticmethod
    def _link(source: str, destination: str) -> bool:
        """Hard-link an unchanged file into the new generation; False to write it."""
        os.makedirs(os.path.dirname(destination), mode=0o755, exist_ok=True)
        try:
            os.link(source, destination, follow_symlinks=False)
        except OSError:
            return False
        return True

    def write_file(self, path: str, data: bytes) -> None:
        """Write and flush one file (creating its directories)."""
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)


def read_zones(directory: str) -> dict[str, ZoneConfig]:
    """Every zone directory under ``directory`` with its files."""
    zones: dict[str, ZoneConfig] = {}
    for name in sorted(os.listdir(directory)):
        zone_dir = os.path.join(directory, name)
        if os.path.isdir(zone_dir) and not os.path.islink(zone_dir):
            zones[name] = ZoneConfig(name, read_tree(zone_dir))
    return zones


def sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_tree(root: str, prefix: str = "", follow_links: bool = False) -> dict[str, str]:
    """Every regular UTF-8 file under ``root``: ``prefix + "/rel/path"`` -> content.

    Symlinks are followed only with ``follow_links`` (an operator's zones directory, as
    Icinga's glob does: a linked file or directory was left out without a word, review;
    a directory reached twice is read once), never in our own store. A file that is not
    valid UTF-8 is left out with a log line (Icinga: "Binary files are not supported");
    a name that is not, is made valid with U+FFFD as Icinga's JSON encoder does (it
    stopped the node at start, review); Icinga's ``.authoritative`` is left out.
    """
    files: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    for directory, dirs, names in os.walk(root, followlinks=follow_links):
        if follow_links:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                dirs.clear()            # a link back up: read once
                continue
            seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(directory, name)
            if name == ".authoritative" or not os.path.isfile(full) or (
                    os.path.islink(full) and not follow_links):
                continue
            rel = prefix + "/" + os.path.relpath(full, root).replace(os.sep, "/")
            rel = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            with open(full, "rb") as fp:
                data = fp.read()
            try:
                files[rel] = data.decode("utf-8")
            except UnicodeDecodeError:
                log.error("config sync: ignoring %s: not valid UTF-8 (binary files cannot "
                          "be synced)", full)
    return files


__all__ = ["COMPLETE_MARKER", "ZoneStore", "read_tree", "read_zones", "sync_dir"]
