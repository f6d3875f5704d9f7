"""The web console on the status listener: its page, its document and its two actions.

``GET /`` and ``/console/<file>`` serve the static page (router.ops.webfiles);
``GET /v1/console`` the document (router.node.console; built at most once a second
whatever the number of viewers), ``?since=T`` for only the samples newer than ``T``,
``?endpoints=0`` without the endpoint rows. The page polls it.

Actions change the node, so they are off unless an admin token is configured
(``[status] admin_token``, else the environment variable ``ROUTER_ADMIN_TOKEN``):

* ``POST /v1/console/actions/sign?fingerprint=FP`` signs a pending certificate request
  with the CA in ``DATA_DIR/ca`` (what ``router ca sign`` does) and hands the certificate
  to the requester if it is still connected;
* ``POST /v1/console/actions/reload`` reloads the configuration (as SIGHUP does).

Each must carry ``Authorization: Bearer <token>``; the token is compared in constant time
(:func:`hmac.compare_digest`). Without a configured token, or with a missing or wrong
one, the answer is ``403`` and nothing happens. Every attempt is counted in
``router_console_actions_total{action,result}`` and logged with the client's address.
A browser on another origin cannot send the header without a CORS preflight, which the
listener does not answer: the token also stops cross-site requests.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping

from router import pki
from router.config import MIN_ADMIN_TOKEN_LENGTH
from router.errors import RouterError
from router.node.console import (
    REPLAY_CACHE_SECONDS,
    SAMPLE_INTERVAL,
    Caches,
    Sampler,
    console_document,
    list_pending,
    read_replay_log,
    replay_figures,
    totals,
)
from router.ops.http import (
    ActionHandler,
    HeadersResponse,
    Response,
    Route,
    WithHeaders,
    json_response,
)
from router.ops.metrics import LabeledCounter, MetricFamily, family
from router.ops.webfiles import load_console_files, static_routes

if TYPE_CHECKING:  # pragma: no cover
    from router.node.core import Node
    from router.node.replay import ReplayManager

__all__ = ["ADMIN_TOKEN_ENV", "ACTION_RESULTS", "Console", "LOCAL_TOKEN_FILE",
           "create_local_token", "read_local_token"]

log = logging.getLogger("router.console")

#: Environment variable with the admin token when ``[status] admin_token`` is empty.
ADMIN_TOKEN_ENV: Final = "ROUTER_ADMIN_TOKEN"
#: ``result`` label values of router_console_actions_total.
ACTION_RESULTS: Final = ("ok", "forbidden", "invalid", "not_found", "conflict", "failed")
ACTIONS: Final = ("sign", "reload")
#: A document younger than this is served again to the next poll (with its own samples):
#: ten open consoles cost the node one build per second, not ten.
DOCUMENT_REUSE_SECONDS: Final = 1.0



#: The node's local reload token, beside its certificates: readable by its owner only.
LOCAL_TOKEN_FILE = "reload.token"


def create_local_token(data_dir: str | os.PathLike[str]) -> str:
    """A new random token in ``DATA_DIR/reload.token`` (0600, written atomically), made
    at every start: ``router reload`` on the node's host reads it, so reloading needs
    read access to the data directory, not only a connection to the status listener."""
    token = secrets.token_urlsafe(32)
    pki.atomic_write(Path(data_dir) / LOCAL_TOKEN_FILE, (token + "\n").encode(), 0o600)
    return token


def read_local_token(data_dir: str | os.PathLike[str]) -> str | None:
    """The token a running node wrote to ``DATA_DIR/reload.token``, or None."""
    try:
        return (Path(data_dir) / LOCAL_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def _bearer_matches(headers: Mapping[str, str], token: str) -> bool:
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode("utf-8", "replace"), token.encode("utf-8"))


class Console:
    """The console's server side for one node: the sampler's timer, routes, actions.

    ``reload`` runs a reload and returns its record as JSON (``RouterService`` passes
    the reloader's); ``reload_status`` is the reloader's state for the document.
    """

    def __init__(self, node: Node, *,
                 reload: Callable[[str], Any] | None = None,
                 reload_status: Callable[[], dict[str, Any]] | None = None,
                 interval: float = SAMPLE_INTERVAL,
                 local_token: str | None = None) -> None:
        self.node = node
        self._short_env_token_logged = False
        #: The node's local reload token (DATA_DIR/reload.token), which POST
        #: /v1/actions/reload also takes: see :func:`create_local_token`.
        self.local_token = local_token
        self.reload = reload
        self.reload_status = reload_status
        self.interval = interval
        self.sampler = Sampler()
        self.caches = Caches()
        self.actions_total = LabeledCounter(("action", "result"))
        self._timer: asyncio.TimerHandle | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._requests_task: asyncio.Task[None] | None = None
        #: the last document built, with or without endpoint rows: (loop time, document)
        self._documents: dict[bool, tuple[float, dict[str, Any]]] = {}
        self._files = load_console_files()

    # -- the sampler's timer

    def start(self) -> None:
        """Sample the totals every ``interval`` seconds until :meth:`stop`."""
        self.sample()
        self._timer = self.node.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in (self._replay_task, self._requests_task):
            if task is not None:
                task.cancel()
        self._replay_task = self._requests_task = None

    def _tick(self) -> None:
        try:
            self.sample()
        except Exception:  # noqa: BLE001 - a console figure must never stop the node
            log.exception("console sampler failed")
        finally:
            self._timer = self.node.loop.call_later(self.interval, self._tick)

    def sample(self) -> None:
        """One sample of the totals; certificates of new sessions parsed ahead; the
        replay log's figures refreshed in a worker thread (LMDB reads stay off the
        event loop)."""
        self.sampler.add(time.time(), totals(self.node))
        caches = self.caches
        # Prune here, not only when a console view is built: with nobody looking, the
        # certificates parsed ahead would keep every closed connection (its TLS state
        # and buffers, ~40 KB) for good, a leak of every reconnect.
        caches.prune(self.node.all_connections)
        caches.warm(self.node.connections.values())
        caches.requests_in_background = True
        if self._requests_task is None and (
                caches.requests is None
                or caches.requests[0] != self.node.enrollment.store.stamp()):
            self._requests_task = self.node.loop.create_task(self._refresh_requests())
        replay = self.node.replay
        if replay is None or self._replay_task is not None:
            return
        now = self.node.loop.time()
        if caches.replay is None or now - caches.replay[0] >= REPLAY_CACHE_SECONDS:
            caches.replay_in_background = True
            self._replay_task = self.node.loop.create_task(self._refresh_replay(replay))

    async def _refresh_requests(self) -> None:
        try:
            self.caches.requests = await asyncio.to_thread(
                list_pending, self.node.enrollment.store)
        except Exception as exc:  # noqa: BLE001 - an unreadable directory: no listing
            log.debug("console: listing certificate requests failed: %r", exc)
        finally:
            self._requests_task = None

    async def _refresh_replay(self, replay: ReplayManager) -> None:
        try:
            stats, positions = await asyncio.to_thread(read_replay_log, replay)
            self.caches.replay = (self.node.loop.time(),
                                  replay_figures(replay, stats, positions))
        except Exception as exc:  # noqa: BLE001 - a closed or broken log: no figures
            log.debug("console: reading the replay log's figures failed: %r", exc)
        finally:
            self._replay_task = None

    # -- authorisation

    def admin_token(self) -> str:
        """The configured token (read on every request: a reload may change it).

        ``ROUTER_ADMIN_TOKEN`` shorter than the configuration allows (16 characters) is
        no token at all: it was taken as it was, so a one-letter token opened the
        console's actions (a review)."""
        token = self.node.config.status.admin_token
        if token:
            return token
        token = os.environ.get(ADMIN_TOKEN_ENV, "")
        if token and len(token) < MIN_ADMIN_TOKEN_LENGTH:
            if not self._short_env_token_logged:
                self._short_env_token_logged = True
                log.warning("%s is shorter than %d characters: ignored, the console's "
                            "actions stay closed", ADMIN_TOKEN_ENV, MIN_ADMIN_TOKEN_LENGTH)
            return ""
        return token

    def authorised(self, headers: Mapping[str, str]) -> tuple[bool, str]:
        """(allowed, why not) for a request's ``Authorization`` header."""
        token = self.admin_token()
        if not token:
            return False, ("actions are disabled: no admin token is configured "
                           f"([status] admin_token or {ADMIN_TOKEN_ENV})")
        given = headers.get("Authorization", "")
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return False, "this action needs 'Authorization: Bearer <admin token>'"
        if not hmac.compare_digest(credentials.strip().encode("utf-8", "replace"),
                                   token.encode("utf-8")):
            return False, "wrong admin token"
        return True, ""

    def _refuse(self, action: str, why: str, headers: Mapping[str, str]) -> Response:
        self.actions_total.inc((action, "forbidden"))
        log.warning("console action %s refused (%s), client %s", action, why,
                    headers.get("X-Forwarded-For") or "on the status listener")
        return json_response({"error": why}, status=403)

    def _done(self, action: str, result: str, status: int, body: dict[str, Any]) -> Response:
        self.actions_total.inc((action, result))
        return json_response(body, status=status)

    # -- the actions

    async def sign(self, query: dict[str, str], headers: Mapping[str, str]) -> Response:
        allowed, why = self.authorised(headers)
        if not allowed:
            return self._refuse("sign", why, headers)
        fingerprint = (query.get("fingerprint") or "").strip().lower()
        if not pki.valid_fingerprint(fingerprint):
            return self._done("sign", "invalid", 400, {
                "error": "fingerprint must be 64 lowercase hex characters"})
        enrollment = self.node.enrollment
        store = enrollment.store
        request = store.get(fingerprint)
        if request is None:
            if store.is_removed(fingerprint):
                return self._done("sign", "conflict", 409, {
                    "error": f"request {fingerprint} was removed; restore it first"})
            return self._done("sign", "not_found", 404, {
                "error": f"no certificate request {fingerprint}"})
        if request.signed:
            return self._done("sign", "conflict", 409, {
                "error": f"request {fingerprint} is already signed"})
        if not enrollment.is_signer():
            return self._done("sign", "conflict", 409, {
                "error": "this node holds no CA key (DATA_DIR/ca/ca.key): sign on the "
                         "signing master"})
        try:
            # The enrollment thread, the key policy and the CA we trust, as for a peer's
            # request; the store write is a small file, also off the loop.
            cert = await enrollment.sign_stored(request.certificate)
            await asyncio.to_thread(store.set_response, fingerprint,
                                    pki.certificate_pem(cert))
            not_after = cert.not_valid_after_utc.isoformat()
        except (RouterError, ValueError, OSError) as exc:
            log.error("console: signing request %s failed: %s", fingerprint[:16], exc)
            return self._done("sign", "failed", 500, {"error": f"signing failed: {exc}"})
        enrollment.refresh(force=True)      # hands it to a requester still connected
        self._documents.clear()
        try:
            self.caches.requests = await asyncio.to_thread(list_pending, store)
        except Exception:  # noqa: BLE001 - the sampler lists it again on its next tick
            self.caches.requests = None
        log.info("console: signed the certificate request %s for CN '%s' (valid until %s)",
                 fingerprint[:16], request.common_name, not_after)
        return self._done("sign", "ok", 200, {"fingerprint": fingerprint,
                                              "cn": request.common_name,
                                              "not_after": not_after})

    async def reload_action(self, query: dict[str, str],
                            headers: Mapping[str, str]) -> Response:
        allowed, why = self.authorised(headers)
        if not allowed:
            return self._refuse("reload", why, headers)
        if self.reload is None:
            return self._done("reload", "failed", 500, {"error": "this node cannot reload"})
        record = await self.reload("console")
        self._documents.clear()
        result = record.get("result")
        status = {"ok": 200, "refused": 409, "busy": 409}.get(result, 500)
        return self._done("reload", "ok" if status == 200 else
                          ("conflict" if status == 409 else "failed"), status, record)

    def guard(self, action: str, handler: ActionHandler) -> WithHeaders:
        """The operator's action route ``POST /v1/actions/reload`` (``router reload``):
        like every action, refused (403, counted) without a token. It takes the admin
        token, or the node's local reload token, which only someone who can read the
        data directory has (``router reload`` reads it there): a node without an admin
        token can still be reloaded by its operator, never by any client of the
        status listener."""

        async def guarded(query: dict[str, str], headers: Mapping[str, str]) -> Response:
            allowed, why = self.authorised(headers)
            if not allowed and self.local_token and _bearer_matches(headers,
                                                                     self.local_token):
                allowed = True
            if not allowed:
                if not self.admin_token():
                    why = ("this action needs 'Authorization: Bearer <token>': the admin "
                           f"token, or the node's local token in DATA_DIR/{LOCAL_TOKEN_FILE}"
                           " (router reload --data-dir reads it)")
                return self._refuse(action, why, headers)
            result = handler(query)
            if inspect.isawaitable(result):
                result = await result
            return result[:3]

        return WithHeaders(guarded)

    # -- routes

    def document(self, query: dict[str, str], headers: Mapping[str, str]
                 ) -> Response | HeadersResponse:
        since: float | None = None
        if query.get("since"):
            try:
                since = float(query["since"])
            except ValueError:
                return json_response({"error": "since must be a number"}, status=400)
        include = query.get("endpoints", "1").lower() not in ("0", "false", "no")
        now = self.node.loop.time()
        reuse = self._documents.get(include)
        if reuse is not None and now - reuse[0] < DOCUMENT_REUSE_SECONDS:
            doc = dict(reuse[1])        # several viewers: one build per second at most
        else:
            doc = console_document(self.node, caches=self.caches, sampler=None,
                                   reload_status=self.reload_status,
                                   admin=bool(self.admin_token()), include_endpoints=include)
            self._documents[include] = (now, doc)
            doc = dict(doc)
        doc["samples"] = self.sampler.since(since)
        return json_response(doc, query=query)

    def routes(self) -> dict[str, Route]:
        """GET routes: the page, its files, the document."""
        routes: dict[str, Route] = dict(static_routes(self._files))
        routes["/v1/console"] = WithHeaders(self.document)
        return routes

    def actions(self) -> dict[str, Any]:
        """POST routes (each checks the token itself)."""
        return {"/v1/console/actions/sign": WithHeaders(self.sign),
                "/v1/console/actions/reload": WithHeaders(self.reload_action)}

    def metric_families(self) -> list[MetricFamily]:
        samples = [({"action": a, "result": r}, self.actions_total.get((a, r)))
                   for a in ACTIONS for r in ACTION_RESULTS]
        return [family("router_console_actions_total", samples)]
