"""Config sync, sans network: update checks, Icinga's message shape, who gets what, the
atomic store, the host-object parser and the component with a scripted node."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config.objects import host_objects
from router.features.configsync import ConfigSync, ZoneConfig, ZoneStore
from router.features.configsync import relay
from router.features.configsync.files import (UpdateRefused, authoritative_zone,
                                              parse_update, path_problem, update_params)
from router.features.configsync.store import COMPLETE_MARKER
from router.protocol import netstring
from router.routing import EndpointSpec, Topology, ZoneSpec

HOSTS_CONF = 'object Host "web01" {\n  check_command = "dummy"\n}\n'
GLOBAL_CONF = 'template Host "generic-host" {\n  max_check_attempts = 3\n}\n'


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def topology(local: str = "sat1") -> Topology:
    zones = [ZoneSpec("master", ("master1",)), ZoneSpec("satellite", ("sat1", "sat2"), "master"),
             ZoneSpec("agents", ("agent1",), "satellite"),
             ZoneSpec("deep", ("deep1",), "agents"),
             ZoneSpec("other-sat", ("osat1",), "master"),
             ZoneSpec("global-templates", global_=True)]
    endpoints = [EndpointSpec(n) for n in
                 ("master1", "sat1", "sat2", "agent1", "deep1", "osat1")]
    return Topology(zones, endpoints, local)


def master_message(zones: dict[str, dict[str, str]], ts: str = "1700000000.000000"
                   ) -> dict[str, Any]:
    """What an Icinga 2.13 master sends: files under /_etc, .checksums and .timestamp."""
    params: dict[str, Any] = {"checksums": {}, "update": {}, "update_v2": {}}
    for name, files in zones.items():
        etc = {f"/_etc/{p}": t for p, t in files.items()}
        v2 = {"/.checksums": json.dumps({p: sha(t) for p, t in sorted(etc.items())},
                                        separators=(",", ":")), "/.timestamp": ts}
        params["update"][name] = etc
        params["update_v2"][name] = v2
        params["checksums"][name] = {p: sha(t) for p, t in {**etc, **v2}.items()}
    return params


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("path", ["/../etc/passwd", "/_etc/../../x", "//etc/passwd", "etc/x",
                                  "/_etc/a\x00b", "/", "/_etc/./x", "/_etc//x", 5])
def test_unsafe_paths_are_named(path):
    assert path_problem(path) is not None


def test_safe_paths():
    for path in ("/_etc/hosts.conf", "/.timestamp", "/_etc/sub dir/x.conf", "/a..b"):
        assert path_problem(path) is None


def allow_all(zone: str) -> str | None:
    return None


def test_parse_update_takes_an_icinga_message():
    params = master_message({"agents": {"hosts.conf": HOSTS_CONF}})
    zones = parse_update(params, allow_all, 1 << 20, 1.0)
    zone = zones["agents"]
    assert zone.files["/_etc/hosts.conf"] == HOSTS_CONF
    assert zone.timestamp == 1700000000.0
    assert zone.update_v1() == {"/_etc/hosts.conf": HOSTS_CONF}
    assert set(zone.update_v2()) == {"/.checksums", "/.timestamp"}


def test_replacement_characters_are_accepted_as_icinga_sends_them():
    """An Icinga master reads a Latin-1 ``*.conf`` through ValidateUTF8 (bytes it cannot
    decode become U+FFFD) and sends that text with its checksum: refused, the whole
    update (every zone) never arrived (review)."""
    text = "// J\ufffdrgen M\ufffdller\n" + HOSTS_CONF
    zones = parse_update(master_message({"agents": {"hosts.conf": text}}),
                         lambda z: None, 1 << 20, 1700000000.0)
    assert zones["agents"].files["/_etc/hosts.conf"] == text


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p["update"]["agents"].__setitem__("/../../evil.conf", "x"), "bad_path"),
    (lambda p: p["update"]["agents"].__setitem__("//etc/cron.conf", "x"), "bad_path"),
    (lambda p: p["update"]["agents"].__setitem__("/_etc/a\x00.conf", "x"), "bad_path"),
    (lambda p: p["checksums"]["agents"].__setitem__("/_etc/hosts.conf", "0" * 64),
     "checksum_mismatch"),
    (lambda p: p["update"]["agents"].__setitem__("/_etc/hosts.conf", 42), "malformed"),
    (lambda p: p.__setitem__("update", []), "malformed"),
    (lambda p: p["update"]["agents"].__setitem__("/_etc/big.conf", "x" * 2000), "too_large"),
])
def test_bad_updates_are_refused_whole(mutate, reason):
    params = master_message({"agents": {"hosts.conf": HOSTS_CONF}})
    mutate(params)
    with pytest.raises(UpdateRefused) as info:
        parse_update(params, allow_all, 1000, 1.0)
    assert info.value.reason == reason


def test_zone_problem_refuses_the_update():
    params = master_message({"agents": {"hosts.conf": HOSTS_CONF}})
    with pytest.raises(UpdateRefused) as info:
        parse_update(params, lambda z: f"zone {z} is not ours", 1 << 20, 1.0)
    assert info.value.reason == "zone_not_allowed" and "agents" in info.value.text


def test_authoritative_marker_is_not_kept_and_timestamp_is_added():
    params = {"update": {"agents": {"/_etc/a.conf": "x"}},
              "update_v2": {"agents": {"/.authoritative": ""}}}
    zone = parse_update(params, allow_all, 1 << 20, 123.5)["agents"]
    assert "/.authoritative" not in zone.files
    assert zone.files["/.timestamp"] == "123.500000"


def test_update_params_have_icinga_shape():
    """Golden message 16: .conf in update, the rest in update_v2, every file checksummed."""
    conf = 'object CheckCommand "my-check" {\n  command = [ "/bin/true" ]\n}\n'
    zone = authoritative_zone("global-templates", {"/_etc/commands.conf": conf},
                              1700000000.0, None)
    params = update_params([zone])
    assert params["update"] == {"global-templates": {"/_etc/commands.conf": conf}}
    v2 = params["update_v2"]["global-templates"]
    assert v2["/.timestamp"] == "1700000000.000000"
    assert json.loads(v2["/.checksums"]) == {"/_etc/commands.conf": sha(conf)}
    assert params["checksums"]["global-templates"] == {
        "/.checksums": sha(v2["/.checksums"]), "/.timestamp": sha(v2["/.timestamp"]),
        "/_etc/commands.conf": sha(conf)}
    frame = relay.encode_update({"global-templates": zone}, ["global-templates"])
    [payload] = netstring.NetstringDecoder(-1).feed(frame)
    message = orjson.loads(payload)
    assert message["method"] == "config::Update" and "ts" not in message
    assert list(message) == sorted(message) and message["params"] == params


def test_authoritative_zone_keeps_timestamp_while_unchanged():
    first = authoritative_zone("z", {"/_etc/a.conf": "a"}, 100.0, None)
    again = authoritative_zone("z", {"/_etc/a.conf": "a"}, 200.0, first)
    changed = authoritative_zone("z", {"/_etc/a.conf": "b"}, 300.0, first)
    assert again is first and again.timestamp == 100.0
    assert changed.timestamp == 300.0 and not changed.same_content(first)


# --------------------------------------------------------------------------- relay


def test_who_may_hold_what():
    topo = topology("sat1")
    assert relay.zone_problem(topo, "satellite") is None
    assert relay.zone_problem(topo, "agents") is None
    assert relay.zone_problem(topo, "deep") is None
    assert relay.zone_problem(topo, "global-templates") is None
    assert "not configured" in relay.zone_problem(topo, "nope")
    assert "neither ours" in relay.zone_problem(topo, "master")
    assert "neither ours" in relay.zone_problem(topo, "other-sat")


def test_who_gets_what():
    topo = topology("sat1")
    held = ["satellite", "agents", "deep", "global-templates"]
    assert relay.zones_for(topo, "agents", held) == ["agents", "deep", "global-templates"]
    assert relay.zones_for(topo, "deep", held) == ["deep", "global-templates"]
    assert relay.receiving_zone(topo, "agent1") == "agents"
    assert relay.receiving_zone(topo, "sat2") is None      # HA peer
    assert relay.receiving_zone(topo, "master1") is None   # parent


# --------------------------------------------------------------------------- store


def zone(name: str, files: dict[str, str]) -> ZoneConfig:
    return ZoneConfig(name, files)


def test_store_round_trip_in_icinga_layout(tmp_path):
    store = ZoneStore(str(tmp_path / "api"))
    assert store.load() == {}
    store.replace({"agents": zone("agents", {"/_etc/hosts.conf": HOSTS_CONF,
                                             "/.timestamp": "1.000000"})})
    assert (tmp_path / "api/zones/agents/_etc/hosts.conf").read_text() == HOSTS_CONF
    assert (tmp_path / "api/zones/agents/.timestamp").read_text() == "1.000000"
    store.replace({"global-templates": zone("global-templates", {"/_etc/t.conf": "x"})})
    loaded = ZoneStore(str(tmp_path / "api")).load()
    assert list(loaded) == ["global-templates"]
    assert not (tmp_path / "api/zones/agents").exists()
    assert sorted(os.listdir(tmp_path / "api")) == ["zones", "zones.2"]


class FullDisk(ZoneStore):
    """Fails with ENOSPC after ``budget`` files."""

    def __init__(self, api_dir: str, budget: int) -> None:
        super().__init__(api_dir)
        self.budget = budget

    def write_file(self, path: str, data: bytes) -> None:
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= 1
        super().write_file(path, data)


def test_disk_full_keeps_the_previous_set(tmp_path):
    api = str(tmp_path / "api")
    ZoneStore(api).replace({"agents": zone("agents", {"/_etc/a.conf": "old"})})
    store = FullDisk(api, budget=1)
    with pytest.raises(OSError):
        store.replace({"agents": zone("agents", {"/_etc/a.conf": "new", "/_etc/b.conf": "b"})})
    assert ZoneStore(api).load()["agents"].files == {"/_etc/a.conf": "old"}
    assert sorted(os.listdir(api)) == ["zones", "zones.1"]


def test_crash_before_publishing_recovers_the_old_set(tmp_path):
    api = tmp_path / "api"
    ZoneStore(str(api)).replace({"agents": zone("agents", {"/_etc/a.conf": "old"})})
    # A crash while writing generation 2: files there, no marker, link not switched.
    (api / "zones.2/agents/_etc").mkdir(parents=True)
    (api / "zones.2/agents/_etc/a.conf").write_text("half")
    assert ZoneStore(str(api)).load()["agents"].files == {"/_etc/a.conf": "old"}
    assert not (api / "zones.2").exists()


def test_crash_between_marker_and_link_uses_the_complete_generation(tmp_path):
    api = tmp_path / "api"
    ZoneStore(str(api)).replace({"agents": zone("agents", {"/_etc/a.conf": "old"})})
    (api / "zones.2/agents").mkdir(parents=True)
    (api / "zones.2/agents/a.conf").write_text("new")
    (api / "zones.2" / COMPLETE_MARKER).write_text("")
    os.unlink(api / "zones")            # crash after removing... no link at all
    assert ZoneStore(str(api)).load()["agents"].files == {"/a.conf": "new"}
    assert os.readlink(api / "zones") == "zones.2"


def test_icinga_made_directory_is_read_then_moved_aside(tmp_path):
    api = tmp_path / "api"
    (api / "zones/agents/_etc").mkdir(parents=True)
    (api / "zones/agents/_etc/h.conf").write_text(HOSTS_CONF)
    (api / "zones/agents/.authoritative").write_text("")
    (api / "zones/agents/_etc/bin.dat").write_bytes(b"\xff\xfe")
    store = ZoneStore(str(api))
    assert store.load()["agents"].files == {"/_etc/h.conf": HOSTS_CONF}
    store.replace({"agents": zone("agents", {"/_etc/h.conf": "changed"})})
    assert os.path.islink(api / "zones")
    assert (api / "zones/agents/_etc/h.conf").read_text() == "changed"
    assert store.cleanup is not None                  # the old one goes in the background
    store.cleanup.join(10)
    assert sorted(os.listdir(api)) == ["zones", "zones.1"]


# --------------------------------------------------------------------------- objects


def test_host_objects_in_icinga_dsl():
    text = '''
    object Host "web01" { address = "10.0.0.1" }
    object Host web02 {}
    object  Host
       "web03" {}
    // object Host "commented1" {}
    # object Host "commented2" {}
    /* object Host "commented3" {
       } */
    template Host "generic-host" {}
    object Service "ping" { host_name = "web01" }
    object Host "web01" {}
    object Host "quote \\"inside\\"" {}
    object Host "with-note" { vars.note = "object Host \\"fake1\\"" }
    object Host "block" { notes = {{{ object Host "fake2" }}} }
    apply Service "x" to Host { assign where true }
    object HostGroup "linux" {}
    '''
    assert host_objects(text) == ["web01", "web02", "web03", 'quote "inside"', "with-note",
                                  "block"]


def test_host_objects_tolerates_truncated_text():
    assert host_objects('object Host "unterminated') == ["unterminated"]
    assert host_objects("/* never closed object Host \"x\"") == []
    assert host_objects("object Host") == []


# --------------------------------------------------------------------------- component


class ScriptedNode:
    """The node as config sync sees it: topology, connected set, send_to."""

    def __init__(self, topo: Topology, connected: set[str]) -> None:
        self.topology = topo
        self.connected_names = connected
        self.sent: list[tuple[str, bytes]] = []

    @property
    def connections(self) -> dict[str, object]:
        return {name: object() for name in self.connected_names}

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool:
        assert method == "config::Update"
        if endpoint not in self.connected_names:
            return False
        self.sent.append((endpoint, frame))
        return True

    def messages(self, endpoint: str) -> list[dict[str, Any]]:
        out = []
        for name, frame in self.sent:
            if name == endpoint:
                [payload] = netstring.NetstringDecoder(-1).feed(frame)
                out.append(orjson.loads(payload))
        return out


def make_sync(tmp_path: Path, node: ScriptedNode, *, accept: bool = True,
              zones_dir: str | None = None, hosts: list | None = None,
              max_bytes: int = 1 << 20, api: str = "api") -> ConfigSync:
    sync = ConfigSync(node, api_dir=str(tmp_path / api), accept_config=accept,
                      zones_dir=zones_dir, max_update_bytes=max_bytes,
                      on_hosts=(lambda h: hosts.append(dict(h))) if hosts is not None else None,
                      clock=lambda: 1700000100.0)
    sync.start()
    return sync


def test_satellite_stores_relays_and_publishes_hosts(tmp_path):
    node = ScriptedNode(topology("sat1"), {"master1", "agent1"})
    hosts: list[dict[str, str]] = []
    sync = make_sync(tmp_path, node, hosts=hosts)
    params = master_message({"satellite": {"sat.conf": 'object Host "satx" {}'},
                             "agents": {"hosts.conf": HOSTS_CONF},
                             "global-templates": {"t.conf": GLOBAL_CONF}})
    assert sync.receive("master1", params) is None
    assert (tmp_path / "api/zones/agents/_etc/hosts.conf").read_text() == HOSTS_CONF
    assert hosts[-1] == {"web01": "agents", "satx": "satellite"}
    [message] = node.messages("agent1")
    sent = message["params"]
    assert sorted(sent["update"]) == ["agents", "global-templates"]  # not "satellite"
    # Exactly what the master sent for these zones: the agent sees the same checksums.
    for name in ("agents", "global-templates"):
        assert sent["update"][name] == params["update"][name]
        assert sent["update_v2"][name] == params["update_v2"][name]
        assert sent["checksums"][name] == params["checksums"][name]
    assert sync.updates[("received", "stored")] == 1
    assert sync.updates[("sent", "change")] == 1

    # The same update again (a reconnect of the parent): nothing written, nothing sent.
    assert sync.receive("master1", params) is None
    assert len(node.sent) == 1 and sync.updates[("received", "unchanged")] == 1

    # A child connecting gets its zones; one that reconnects gets the same bytes.
    sync.endpoint_connected("agent1")
    assert node.sent[-1][1] == node.sent[0][1]
    status = {z["zone"]: z for z in sync.status()}
    assert status["agents"]["files"] == 3 and status["agents"]["age_seconds"] == 100.0
    assert status["agents"]["checksum"] == sync.zones["agents"].digest


def test_only_changed_zones_trigger_sends(tmp_path):
    node = ScriptedNode(topology("sat1"), {"master1", "agent1"})
    sync = make_sync(tmp_path, node)
    base = {"satellite": {"s.conf": "s"}, "agents": {"hosts.conf": HOSTS_CONF}}
    assert sync.receive("master1", master_message(base)) is None
    assert len(node.sent) == 1
    # Only our own zone changed: the agent's zones are untouched, nothing is sent.
    changed = dict(base, satellite={"s.conf": "s2"})
    assert sync.receive("master1", master_message(changed, ts="1700000050.000000")) is None
    assert len(node.sent) == 1
    # A newer timestamp with the same files: stored copy (and its timestamp) kept.
    assert sync.receive("master1", master_message(changed, ts="1700000090.000000")) is None
    assert sync.zones["agents"].timestamp == 1700000000.0
    # An older copy with other content is not taken (Icinga: production is more recent).
    older = dict(base, agents={"hosts.conf": "object Host \"old\" {}"})
    assert sync.receive("master1", master_message(older, ts="1600000000.000000")) is None
    assert sync.zones["agents"].files["/_etc/hosts.conf"] == HOSTS_CONF


def test_zone_removed_by_the_parent_is_removed_and_children_told(tmp_path):
    node = ScriptedNode(topology("sat1"), {"master1", "agent1"})
    sync = make_sync(tmp_path, node)
    sync.receive("master1", master_message({"agents": {"h.conf": "x"},
                                            "global-templates": {"t.conf": "t"}}))
    sync.receive("master1", master_message({"agents": {"h.conf": "x"}}))
    assert "global-templates" not in sync.zones
    assert not (tmp_path / "api/zones/global-templates").exists()
    assert sorted(node.messages("agent1")[-1]["params"]["update"]) == ["agents"]


@pytest.mark.parametrize("sender, accept, reason", [
    ("agent1", True, "not_parent"),     # a child
    ("sat2", True, "not_parent"),       # an HA peer in our zone
    ("osat1", True, "not_parent"),      # a sibling zone's endpoint
    ("master1", False, "not_accepted"),
])
def test_updates_from_anyone_but_the_parent_are_refused(tmp_path, sender, accept, reason):
    node = ScriptedNode(topology("sat1"), {"agent1"})
    sync = make_sync(tmp_path, node, accept=accept)
    refusal = sync.receive(sender, master_message({"agents": {"h.conf": "x"}}))
    assert refusal is not None and refusal.reason == reason
    assert sync.updates[("received", reason)] == 1
    assert not (tmp_path / "api").exists() and node.sent == []


def test_zone_that_is_not_ours_refuses_everything(tmp_path):
    node = ScriptedNode(topology("sat1"), {"agent1"})
    sync = make_sync(tmp_path, node)
    for name in ("master", "other-sat"):
        refusal = sync.receive("master1", master_message({"agents": {"h.conf": "x"},
                                                          name: {"x.conf": "x"}}))
        assert refusal is not None and refusal.reason == "zone_not_allowed"
        assert name in refusal.text
    assert not (tmp_path / "api").exists() and sync.zones == {}


def test_a_zone_not_configured_here_is_ignored_and_the_others_taken(tmp_path):
    """An Icinga master sends every global zone it has to every child; an Icinga
    receiver skips one it does not know and applies the others. Refusing the whole
    update left a satellite without the master's "director-global" with no
    configuration at all, for itself and its children (review)."""
    node = ScriptedNode(topology("sat1"), {"master1", "agent1"})
    sync = make_sync(tmp_path, node)
    params = master_message({"agents": {"hosts.conf": HOSTS_CONF},
                             "director-global": {"d.conf": "// director templates\n"}})
    assert sync.receive("master1", params) is None
    assert "agents" in sync.zones and "director-global" not in sync.zones
    assert (tmp_path / "api/zones/agents/_etc/hosts.conf").read_text() == HOSTS_CONF
    assert not (tmp_path / "api/zones/director-global").exists()


def test_disk_full_is_refused_and_the_old_set_stays(tmp_path):
    node = ScriptedNode(topology("sat1"), {"agent1"})
    sync = make_sync(tmp_path, node)
    sync.receive("master1", master_message({"agents": {"h.conf": "old"}}))
    sync.store = FullDisk(sync.store.api_dir, budget=1)
    refusal = sync.receive("master1", master_message({"agents": {"h.conf": "new",
                                                                 "i.conf": "i"}},
                                                     ts="1700000050.000000"))
    assert refusal is not None and refusal.reason == "write_failed"
    assert "No space left" in refusal.text
    assert sync.zones["agents"].files["/_etc/h.conf"] == "old"
    assert ZoneStore(str(tmp_path / "api")).load()["agents"].files["/_etc/h.conf"] == "old"
    assert len(node.sent) == 1   # the agent was only ever sent the old set


def test_master_serves_zones_dir_and_reload_sends_only_changes(tmp_path):
    topo = Topology([ZoneSpec("master", ("master1",)),
                     ZoneSpec("a1", ("agent1",), "master"),
                     ZoneSpec("a2", ("agent2",), "master"),
                     ZoneSpec("global-templates", global_=True),
                     ZoneSpec("unrelated-global", global_=True)],
                    [EndpointSpec(n) for n in ("master1", "agent1", "agent2")], "master1")
    zd = tmp_path / "zones.d"
    for name, text in (("a1", 'object Host "h1" {}'), ("a2", 'object Host "h2" {}'),
                       ("global-templates", GLOBAL_CONF)):
        (zd / name).mkdir(parents=True)
        (zd / name / "hosts.conf").write_text(text)
    (zd / "nonexistent-zone").mkdir()
    (zd / "nonexistent-zone/x.conf").write_text("x")
    node = ScriptedNode(topo, set())
    hosts: list[dict[str, str]] = []
    sync = make_sync(tmp_path, node, accept=False, zones_dir=str(zd), hosts=hosts)
    assert node.sent == []
    node.connected_names.update({"agent1", "agent2"})
    assert hosts[-1] == {"h1": "a1", "h2": "a2"}
    assert sorted(sync.zones) == ["a1", "a2", "global-templates"]
    assert (tmp_path / "api/zones/a1/_etc/hosts.conf").read_text() == 'object Host "h1" {}'
    sync.endpoint_connected("agent1")
    [first] = node.messages("agent1")
    assert sorted(first["params"]["update"]) == ["a1", "global-templates"]
    assert first["params"]["update"]["a1"] == {"/_etc/hosts.conf": 'object Host "h1" {}'}

    (zd / "a2/hosts.conf").write_text('object Host "h2b" {}')
    assert sync.reload() == ["a2"]
    assert len(node.messages("agent1")) == 1 and len(node.messages("agent2")) == 1
    assert hosts[-1] == {"h1": "a1", "h2b": "a2"}
    assert sync.reload() == []                       # unchanged: nothing resent
    (zd / "global-templates/hosts.conf").write_text(GLOBAL_CONF + "# more\n")
    assert sync.reload() == ["global-templates"]     # a global zone: everyone
    assert len(node.messages("agent1")) == 2 and len(node.messages("agent2")) == 2

    # A restart with unchanged files keeps the timestamps agents compare.
    stamp = sync.zones["a1"].files["/.timestamp"]
    again = ConfigSync(node, api_dir=str(tmp_path / "api"), accept_config=False,
                       zones_dir=str(zd), max_update_bytes=1 << 20, clock=lambda: 2e9)
    again.start()
    assert again.zones["a1"].files["/.timestamp"] == stamp
    assert again.zones["a1"].checksums == sync.zones["a1"].checksums
    assert len(node.sent) == 4                       # and nobody was sent anything

    # A zone directory removed while we were stopped is not served after the restart.
    import shutil
    shutil.rmtree(zd / "a2")
    third = ConfigSync(node, api_dir=str(tmp_path / "api"), accept_config=False,
                       zones_dir=str(zd), max_update_bytes=1 << 20)
    third.start()
    assert sorted(third.zones) == ["a1", "global-templates"]


def test_parent_cannot_overwrite_authoritative_zones(tmp_path):
    zd = tmp_path / "zones.d"
    (zd / "agents").mkdir(parents=True)
    (zd / "agents/h.conf").write_text("mine")
    node = ScriptedNode(topology("sat1"), {"agent1"})
    sync = make_sync(tmp_path, node, zones_dir=str(zd))
    assert sync.receive("master1", master_message({"agents": {"h.conf": "theirs"},
                                                   "satellite": {"s.conf": "s"}})) is None
    assert sync.zones["agents"].files["/_etc/h.conf"] == "mine"
    assert sorted(sync.zones) == ["agents", "satellite"]


# --------------------------------------------------------------------------- CLI


def test_cli_config_zones_shows_what_an_endpoint_gets(tmp_path):
    from click.testing import CliRunner

    from router.cli import main

    zd = tmp_path / "zones.d"
    (zd / "agents").mkdir(parents=True)
    (zd / "agents/hosts.conf").write_text(HOSTS_CONF)
    (zd / "global-templates").mkdir()
    (zd / "global-templates/t.conf").write_text(GLOBAL_CONF)
    (zd / "other").mkdir()
    (zd / "other/o.conf").write_text("o")
    cfg = tmp_path / "router.toml"
    cfg.write_text(f'''
[node]
name = "master1"
data_dir = "{tmp_path / 'data'}"
zones_dir = "{zd}"
[[zones]]
name = "master"
endpoints = ["master1"]
[[zones]]
name = "agents"
endpoints = ["agent1"]
parent = "master"
[[zones]]
name = "other"
endpoints = ["agent2"]
parent = "master"
[[zones]]
name = "global-templates"
global = true
[[endpoints]]
name = "master1"
[[endpoints]]
name = "agent1"
[[endpoints]]
name = "agent2"
''')
    runner = CliRunner()
    result = runner.invoke(main, ["config", "zones", "--config", str(cfg),
                                  "--endpoint", "agent1"])
    assert result.exit_code == 0, result.output
    assert "endpoint agent1 receives 2 zones:" in result.output
    assert "agents: 3 files" in result.output and "global-templates: 3 files" in result.output
    assert "other:" not in result.output and "/_etc/hosts.conf" in result.output
    result = runner.invoke(main, ["config", "zones", "--config", str(cfg), "--zone", "agents",
                                  "--json"])
    assert result.exit_code == 0, result.output
    params = json.loads(result.output)
    assert params["update"]["agents"] == {"/_etc/hosts.conf": HOSTS_CONF}
    assert not (tmp_path / "data/api").exists()       # it only reads
    result = runner.invoke(main, ["config", "zones", "--config", str(cfg), "--zone", "master"])
    assert "sends it no configuration" in result.output
    result = runner.invoke(main, ["config", "zones", "--config", str(cfg),
                                  "--endpoint", "nobody"])
    assert result.exit_code == 1 and "'nobody' is not in any configured zone" in result.output


def test_config_keys_are_checked_with_their_line(tmp_path):
    from router.config import load_config
    from router.errors import ConfigError

    base = f'[node]\nname = "m"\ndata_dir = "{tmp_path}"\n'
    zones = '[[zones]]\nname = "m"\nendpoints = ["m"]\n[[endpoints]]\nname = "m"\n'
    good = tmp_path / "good.toml"
    (tmp_path / "zd").mkdir()
    good.write_text(base + 'accept_config = true\nzones_dir = "zd"\n'
                    + '[limits]\nmax_config_update_bytes = "1MiB"\n' + zones)
    cfg = load_config(str(good))
    assert cfg.node.accept_config and cfg.node.zones_dir == str(tmp_path / "zd")
    assert cfg.limits.max_config_update_bytes == 1 << 20
    for extra, key, line in (('accept_config = "yes"\n', "accept_config", 4),
                             ('zones_dir = "missing"\n', "zones_dir", 4)):
        bad = tmp_path / "bad.toml"
        bad.write_text(base + extra + zones)
        with pytest.raises(ConfigError) as info:
            load_config(str(bad))
        assert f":{line}" in str(info.value) and key in str(info.value)
    bad.write_text(base + zones + '[limits]\nmax_config_update_bytes = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert "max_config_update_bytes" in str(info.value)


def test_ha_satellites_relay_identical_bytes(tmp_path):
    """Both members of an HA satellite zone store the parent's files as sent (timestamp
    included), so an agent connected to either gets the same message and never reloads
    for a switch of satellite."""
    params = master_message({"agents": {"hosts.conf": HOSTS_CONF},
                             "global-templates": {"t.conf": GLOBAL_CONF}})
    frames = []
    for name, now in (("sat1", 1700000100.0), ("sat2", 1700009999.0)):
        node = ScriptedNode(topology(name), {"master1", "agent1"})
        sync = ConfigSync(node, api_dir=str(tmp_path / name), accept_config=True,
                          zones_dir=None, max_update_bytes=1 << 20, clock=lambda: now)
        sync.start()
        assert sync.receive("master1", params) is None
        frames.append(node.sent[-1][1])
    assert frames[0] == frames[1]


def test_serve_options_reach_the_configuration(tmp_path):
    from router.config.load import quickstart_config

    (tmp_path / "zd").mkdir()
    cfg = quickstart_config(node_name="sat1", data_dir=str(tmp_path), accept_config=True,
                            zones_dir=str(tmp_path / "zd"))
    assert cfg.node.accept_config and cfg.node.zones_dir == str(tmp_path / "zd")
    again = quickstart_config(base=cfg, listen="none")
    assert again.node.accept_config and again.node.zones_dir == str(tmp_path / "zd")
    from router.errors import ConfigError
    with pytest.raises(ConfigError) as info:
        quickstart_config(node_name="sat1", data_dir=str(tmp_path),
                          zones_dir=str(tmp_path / "missing"))
    assert "zones_dir" in str(info.value) or "zones directory" in str(info.value)


def test_reload_hook_takes_the_new_settings(tmp_path):
    import dataclasses

    from router.config.load import quickstart_config

    zd = tmp_path / "zd"
    (zd / "agents").mkdir(parents=True)
    (zd / "agents/h.conf").write_text('object Host "h1" {}')
    node = ScriptedNode(topology("sat1"), {"agent1"})
    hosts: list[dict[str, str]] = []
    sync = make_sync(tmp_path, node, accept=False, hosts=hosts)
    assert sync.zones == {} and node.sent == []
    cfg = quickstart_config(node_name="sat1", data_dir=str(tmp_path), accept_config=True,
                            zones_dir=str(zd))
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(
        cfg.limits, max_config_update_bytes=1234))
    sync.on_reload(cfg, None)
    assert sync.accept_config and sync.max_update_bytes == 1234
    assert sorted(sync.zones) == ["agents"] and hosts[-1] == {"h1": "agents"}
    assert [name for name, _ in node.sent] == ["agent1"]
    sync.on_reload(cfg, None)        # nothing changed: hosts given again, nothing sent
    assert len(node.sent) == 1 and hosts[-1] == {"h1": "agents"} and len(hosts) == 3


def test_one_encoding_per_child_zone(tmp_path):
    """Every endpoint of a child zone gets the same frame object: encoded once."""
    topo = Topology([ZoneSpec("master", ("master1",)), ZoneSpec("sat", ("sat1",), "master"),
                     ZoneSpec("agents", ("a1", "a2"), "sat")],
                    [EndpointSpec(n) for n in ("master1", "sat1", "a1", "a2")], "sat1")
    node = ScriptedNode(topo, {"master1", "a1", "a2"})
    sync = make_sync(tmp_path, node)
    assert sync.receive("master1", master_message({"agents": {"h.conf": "x"}})) is None
    [(first, frame1), (second, frame2)] = node.sent
    assert (first, second) == ("a1", "a2") and frame1 is frame2
