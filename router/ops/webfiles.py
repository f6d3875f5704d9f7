"""The web console's static files, served from the installed package.

The files live in ``router/ops/console/`` (HTML, CSS, plain JavaScript, SVG: no build step,
nothing fetched at runtime) and are read once through :mod:`importlib.resources`, so they
are found the same way in a source checkout, a wheel or a zip. Each answer carries an
``ETag`` (a hash of the file) and is revalidated cheaply (``304``); the page itself is
``no-cache`` so a new router version's console is picked up at once, the assets may be
cached for a few minutes. A Content-Security-Policy keeps the page to its own origin:
no inline script, nothing from elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from router.ops.http import HeadersResponse, Response, WithHeaders

__all__ = ["StaticFile", "load_console_files", "static_routes", "SECURITY_HEADERS"]

#: The package directory the console's files are shipped in (package data).
CONSOLE_PACKAGE = "router.ops"
CONSOLE_DIR = "console"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: Sent with every console file: the page may only talk to its own origin.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

#: Assets (CSS, JavaScript, icons) may be reused for five minutes without asking.
ASSET_MAX_AGE = 300


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file: its bytes, content type and entity tag."""

    name: str
    body: bytes
    content_type: str
    etag: str


def load_console_files() -> dict[str, StaticFile]:
    """Every file of the console directory by name (read once, at start)."""
    root = resources.files(CONSOLE_PACKAGE).joinpath(CONSOLE_DIR)
    files: dict[str, StaticFile] = {}
    for entry in root.iterdir():
        name = entry.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[name] = StaticFile(name, body, _TYPES[suffix], etag)
    if "index.html" not in files:
        raise FileNotFoundError(f"the console's index.html is missing from {root} "
                                "(package data not installed?)")
    return files


def _serve(file: StaticFile, cache_control: str) -> WithHeaders:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": file.etag}

    def handler(query: dict[str, str], request_headers: Mapping[str, str]
                ) -> Response | HeadersResponse:
        match = request_headers.get("If-None-Match", "")
        if match and (match.strip() == "*" or file.etag in
                      [tag.strip().removeprefix("W/") for tag in match.split(",")]):
            return 304, file.content_type, b"", headers
        return 200, file.content_type, file.body, headers

    return WithHeaders(handler)


def static_routes(files: Mapping[str, StaticFile]) -> dict[str, WithHeaders]:
    """``/`` (the page) and ``/console/<name>`` for every file."""
    routes: dict[str, WithHeaders] = {
        f"/console/{name}": _serve(file, f"public, max-age={ASSET_MAX_AGE}")
        for name, file in files.items()}
    routes["/"] = _serve(files["index.html"], "no-cache")
    routes["/console/"] = WithHeaders(_to_the_page)
    return routes


def _to_the_page(query: dict[str, str], request_headers: Mapping[str, str]) -> HeadersResponse:
    """``/console/`` sends the browser to the page (``../``, relative: it works under a
    proxy's path prefix too). Served there as well, the page's relative requests went to
    ``/console/v1/console`` (the page uses relative URLs so that a prefix works; review)."""
    return 302, "text/plain; charset=utf-8", b"the console is at ../\n", {
        "Location": "../", "Cache-Control": "no-cache"}
