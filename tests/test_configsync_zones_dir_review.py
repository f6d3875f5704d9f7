"""Master role (``zones_dir``): files an Icinga master serves from zones.d that the
router drops or chokes on."""

from __future__ import annotations

import os
from pathlib import Path

from tests.test_configsync import ScriptedNode, make_sync
from router.routing import EndpointSpec, Topology, ZoneSpec

HOSTS = 'object Host "web01" {\n  check_command = "dummy"\n}\n'
MORE = 'object Host "web02" {\n  check_command = "dummy"\n}\n'


def master_topology() -> Topology:
    return Topology([ZoneSpec("master", ("master1",)),
                     ZoneSpec("agents", ("agent1",), "master"),
                     ZoneSpec("global-templates", global_=True)],
                    [EndpointSpec(n) for n in ("master1", "agent1")], "master1")


def test_non_utf8_file_name_does_not_stop_the_router(tmp_path: Path) -> None:
    """A file whose *name* is not UTF-8 (copied from an old Latin-1 system) in zones.d:
    Icinga syncs it (JsonEncode sanitizes keys with ValidateUTF8) and serves every other
    file. ConfigSync.start() (run by the app before any socket) raises TypeError from
    orjson, so the router does not start at all; on a reload the hook fails and no zone
    change is ever sent."""
    zd = tmp_path / "zones.d"
    (zd / "agents").mkdir(parents=True)
    (zd / "agents/hosts.conf").write_text(HOSTS)
    (zd / "global-templates").mkdir()
    (zd / "global-templates/t.conf").write_text("// templates\n")
    with open(os.fsencode(zd / "agents") + b"/caf\xe9.conf", "wb") as fp:
        fp.write(b"// old file\n")
    node = ScriptedNode(master_topology(), {"agent1"})
    try:
        sync = make_sync(tmp_path, node, accept=False, zones_dir=str(zd))
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"one file with a non-UTF-8 name in zones_dir makes "
                             f"ConfigSync.start() raise {exc!r}: the router cannot "
                             f"start") from exc
    assert sync.zones["agents"].files["/_etc/hosts.conf"] == HOSTS
    sync.endpoint_connected("agent1")   # and encoding the update must not raise either
    assert node.messages("agent1"), "agent1 was sent nothing"


def test_symlinked_files_in_zones_dir_are_served(tmp_path: Path) -> None:
    """zones.d managed with symlinks (a shared file linked into several zones, a
    checkout linked in): Icinga's GlobRecursive uses stat(), so it compiles and syncs
    symlinked files and directories. read_tree (store.py) skips symlinks silently (no
    log line), so the agents lose these hosts without any hint why."""
    shared = tmp_path / "shared"
    (shared / "linux").mkdir(parents=True)
    (shared / "more.conf").write_text(MORE)
    (shared / "linux/linux.conf").write_text('object Host "web03" {}\n')
    zd = tmp_path / "zones.d"
    (zd / "agents").mkdir(parents=True)
    (zd / "agents/hosts.conf").write_text(HOSTS)
    os.symlink(shared / "more.conf", zd / "agents/more.conf")
    os.symlink(shared / "linux", zd / "agents/linux")
    node = ScriptedNode(master_topology(), {"agent1"})
    sync = make_sync(tmp_path, node, accept=False, zones_dir=str(zd))
    files = sync.zones["agents"].files
    assert "/_etc/more.conf" in files and "/_etc/linux/linux.conf" in files, (
        f"symlinked file/directory in zones_dir not served (Icinga follows them): "
        f"{sorted(files)}")
