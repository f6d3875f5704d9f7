"""A real headless Chromium for the console tests: Debian's ``chromium`` driven through its
matching ``chromedriver`` by Selenium (nothing is downloaded: Selenium Manager is bypassed
by naming the driver binary).

``browser()`` skips the test when the browser, the driver or Selenium is missing, unless
``ROUTER_REQUIRE_BACKENDS`` is set (CI), where that is a failure. ``ClusterLoop`` runs the
nodes' event loop in a thread, so the blocking WebDriver calls stay in the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

T = TypeVar("T")

CHROMIUM = os.environ.get("ROUTER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (os.environ.get("ROUTER_CHROMEDRIVER") or shutil.which("chromedriver")
                or "/usr/bin/chromedriver")
#: The flags of the brief: no sandbox (containers), nothing phoning home, a fresh profile.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def _missing() -> list[str]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return missing


def require_browser() -> None:
    """Skip (or fail under ROUTER_REQUIRE_BACKENDS) without chromium, chromedriver or
    selenium."""
    missing = _missing()
    if not missing:
        return
    text = f"browser test needs {', '.join(missing)}"
    if os.environ.get("ROUTER_REQUIRE_BACKENDS"):
        pytest.fail(text + " (ROUTER_REQUIRE_BACKENDS is set)")
    pytest.skip(text)


@contextlib.contextmanager
def browser(width: int = 1440, height: int = 1100) -> Iterator[Any]:
    """A headless Chromium WebDriver with the browser console log enabled."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="router-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def javascript_errors(driver: Any) -> list[dict[str, Any]]:
    """Entries of the browser's console log at level SEVERE (errors, failed loads, CSP)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def artifact_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``$ROUTER_TEST_ARTIFACTS`` (kept by CI) or the test's tmp."""
    base = os.environ.get("ROUTER_TEST_ARTIFACTS")
    path = Path(base) if base else tmp_path / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition",
             interval: float = 0.1) -> Any:
    """Poll ``predicate`` (blocking) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class ClusterLoop:
    """An event loop (uvloop) in a thread, for the nodes under test."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="cluster-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()
