"""Config sync (Icinga's ``config::Update``): the zones a node holds and relays.

``files`` is one zone's files and the checks on a received update (pure), ``store`` the
on-disk layout with atomic replacement, ``relay`` Icinga's rules for who gets which zones
(pure), ``component`` the glue the node calls. See docs/config-sync.md.
"""

from __future__ import annotations

from router.features.configsync.component import ConfigSync, ConfigSyncHost, Refusal
from router.features.configsync.files import UpdateRefused, ZoneConfig
from router.features.configsync.store import ZoneStore

__all__ = ["ConfigSync", "ConfigSyncHost", "Refusal", "UpdateRefused", "ZoneConfig",
           "ZoneStore"]
