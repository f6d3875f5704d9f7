"""Reload hooks: components react to a reload without the reload code importing them."""

from __future__ import annotations

import asyncio

from router.config import parse_config
from router.config.diff import diff_configs
from router.node.reload import ReloadHooks

CONFIG = parse_config("""[node]
name = "n"
data_dir = "/tmp/n"
[[zones]]
name = "z"
endpoints = ["n"]
[[endpoints]]
name = "n"
""", "/tmp/r.toml")
DIFF = diff_configs(CONFIG, CONFIG)


class NoArgs:
    def __init__(self) -> None:
        self.topology = "old"
        self.calls: list[tuple] = []

    def reload(self) -> list[str]:
        self.calls.append((self.topology,))
        return []


class WithConfig:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def reload(self, config, diff) -> None:
        self.calls.append((config, diff))


class Broken:
    def reload(self) -> None:
        raise RuntimeError("boom")


def test_components_are_called_in_order_with_what_their_signature_takes() -> None:
    hooks = ReloadHooks()
    hooks.topology_of = lambda: "new"
    plain, full, broken = NoArgs(), WithConfig(), Broken()
    hooks.register_component("plain", plain)
    hooks.register_component("full", full)
    hooks.register_component("broken", broken)
    hooks.register_component("nothing", object())          # no reload(): ignored
    assert hooks.names() == ("plain", "full", "broken")
    failed = asyncio.run(hooks.run(CONFIG, DIFF))
    assert failed == ["broken"]
    assert plain.calls == [("new",)] and plain.topology == "new"
    assert full.calls == [(CONFIG, DIFF)]
    hooks.unregister("broken")
    assert asyncio.run(hooks.run(CONFIG, DIFF)) == []


class FollowsTheNode:
    """Its topology is a read-only property (it asks the node itself)."""

    def __init__(self) -> None:
        self.calls = 0

    @property
    def topology(self) -> str:
        return "live"

    def reload(self, config) -> None:
        self.calls += 1


def test_component_with_a_topology_property_is_left_alone() -> None:
    hooks = ReloadHooks()
    hooks.topology_of = lambda: "new"
    component = FollowsTheNode()
    hooks.register_component("follows", component)
    assert asyncio.run(hooks.run(CONFIG, DIFF)) == []
    assert component.calls == 1 and component.topology == "live"
