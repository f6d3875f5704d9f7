"""Issue 16 S2: every parameter's JSON type is checked before routing; a wrong type is a
counted refusal naming peer, method, field and expected type; the session stays up unless
it exceeds its budget of malformed messages."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from router.config import parse_config
from router.node import Node
from router.protocol import jsonrpc
from router.routing import METHODS
from router.routing.fields import FIELDS, RefusalBudget, check_params, json_type
from router.transport import PeerConnection
from router.transport.sendqueue import SendQueue
from tests.nodeutil import ClusterSpec, FakePeer, check_result, metrics_text, wait_until
from tests.pkiutil import make_test_pki

NOW = 1700000000.0
CR = {"active": True, "check_source": "agent1", "command": ["/bin/true"],
      "execution_end": NOW, "execution_start": NOW - 1, "exit_status": 0, "output": "OK",
      "performance_data": [], "previous_hard_state": 0, "schedule_end": NOW,
      "schedule_start": NOW - 1, "scheduling_source": "agent1", "state": 0, "ttl": 0,
      "type": "CheckResult", "vars_after": None, "vars_before": None}
CHECKABLE = {"host": "agent1", "service": "disk"}

#: A well-typed params object for every method (the golden messages' shapes).
VALID: dict[str, dict[str, Any]] = {
    "icinga::Hello": {"version": 21306, "capabilities": 1},
    "event::Heartbeat": {},
    "log::SetLogPosition": {"log_position": NOW},
    "event::CheckResult": {**CHECKABLE, "cr": CR},
    "event::SetNextCheck": {**CHECKABLE, "next_check": NOW + 300},
    "event::SetLastCheckStarted": {**CHECKABLE, "last_check_started": NOW},
    "event::SetStateBeforeSuppression": {**CHECKABLE, "state_before_suppression": 0},
    "event::SetSuppressedNotifications": {**CHECKABLE, "suppressed_notifications": 0},
    "event::SetSuppressedNotificationTypes": {"notification": "agent1!disk!mail",
                                              "suppressed_notifications": 0},
    "event::SetNextNotification": {"notification": "agent1!disk!mail",
                                   "next_notification": NOW},
    "event::SetForceNextCheck": {**CHECKABLE, "forced": True},
    "event::SetForceNextNotification": {**CHECKABLE, "forced": False},
    "event::SetAcknowledgement": {**CHECKABLE, "author": "admin", "comment": "on it",
                                  "acktype": 1, "notify": True, "persistent": False,
                                  "expiry": 0, "change_time": NOW},
    "event::ClearAcknowledgement": {**CHECKABLE, "author": "admin", "change_time": NOW},
    "event::SendNotifications": {**CHECKABLE, "cr": CR, "type": 32, "author": "",
                                 "text": ""},
    "event::NotificationSentUser": {**CHECKABLE, "notification": "mail", "user": "u",
                                    "type": 32, "cr": CR, "author": "", "text": "",
                                    "command": "mail-service"},
    "event::NotificationSentToAllUsers": {
        **CHECKABLE, "notification": "mail", "users": ["u"], "type": 32, "cr": CR,
        "author": "", "text": "", "last_notification": NOW, "next_notification": NOW,
        "notification_number": 1, "last_problem_notification": NOW,
        "no_more_notifications": False},
    "event::ExecuteCommand": {"command_type": "check_command", "command": "disk",
                              "host": "agent1", "service": "disk", "macros": {},
                              "check_timeout": 30},
    "event::ExecutedCommand": {"execution": "0b9f", "host": "agent1", "exit": 0,
                               "output": "OK", "start": NOW, "end": NOW},
    "event::UpdateExecutions": {"host": "agent1", "executions": {"0b9f": {}}},
    "event::SetRemovalInfo": {"object_type": "Downtime", "object_name": "agent1!disk!x",
                              "removed_by": "admin", "remove_time": NOW},
    "config::Update": {"update": {}, "update_v2": {}, "checksums": {}},
    "config::UpdateObject": {"name": "agent1!disk!x", "type": "Downtime", "version": NOW,
                             "zone": "agent1", "config": "", "modified_attributes": {},
                             "original_attributes": []},
    "config::DeleteObject": {"name": "agent1!disk!x", "type": "Downtime", "version": NOW},
    "pki::RequestCertificate": {"ticket": ""},
    "pki::UpdateCertificate": {"status_code": 1, "error": "x"},
}

JSON_VALUES = {"null": None, "boolean": True, "number": 1, "float": 1.5, "string": "x",
               "array": [1], "object": {"a": 1}}


# -- pure ----------------------------------------------------------------------------------

def test_every_method_has_valid_params_that_pass() -> None:
    assert set(VALID) == set(METHODS)
    for method, params in VALID.items():
        assert check_params(method, params) is None, method


def test_every_object_naming_parameter_is_typed() -> None:
    for method, spec in METHODS.items():
        if spec.obj.value != "none":
            names = [name for name, _ in FIELDS[method]]
            assert spec.obj.value in names, method


@pytest.mark.parametrize("method", sorted(FIELDS))
def test_each_field_with_each_json_type(method: str) -> None:
    for field, types in FIELDS[method]:
        for kind, value in JSON_VALUES.items():
            params = dict(VALID[method], **{field: value})
            problem = check_params(method, params)
            if type(value) in types:
                assert problem is None
            else:
                assert problem is not None and problem.field == field
                assert problem.got == json_type(value)
                assert field in problem.describe() and problem.expected in problem.describe()


def test_service_object_is_named_and_bools_are_not_numbers() -> None:
    problem = check_params("event::CheckResult", {"host": "h", "service": {"a": 1},
                                                  "cr": {}})
    assert problem.describe() == "parameter 'service' must be string or null, got object"
    problem = check_params("log::SetLogPosition", {"log_position": True})
    assert problem.describe() == "parameter 'log_position' must be number, got boolean"
    assert check_params("event::CheckResult", {"host": "h", "service": None, "cr": {}}) \
        is None
    assert check_params("no::Such", {"host": 1}) is None          # the router refuses it
    assert check_params("event::CheckResult", None) is None       # no_params, the router's


def test_refusal_budget_per_window() -> None:
    budget = RefusalBudget(3, window=60.0)
    assert [budget.spend(100.0 + i) for i in range(4)] == [True, True, True, False]
    assert budget.spend(161.0)          # a new window
    assert budget.spent == 1


# -- the node, sans TLS: property test --------------------------------------------------------

CONFIG = """
results = "on"
[node]
name = "sat1"
data_dir = "/nonexistent"
[tls]
ca = "/nonexistent/ca.crt"
cert = "/nonexistent/sat1.crt"
key = "/nonexistent/sat1.key"
[limits]
max_invalid_messages = 1000000
[[zones]]
name = "master"
endpoints = ["m1"]
[[zones]]
name = "sat"
endpoints = ["sat1"]
parent = "master"
[[zones]]
name = "agent1"
endpoints = ["agent1"]
parent = "sat"
[[zones]]
name = "agent2"
endpoints = ["agent2"]
parent = "sat"
[[endpoints]]
name = "m1"
[[endpoints]]
name = "sat1"
[[endpoints]]
name = "agent1"
[[endpoints]]
name = "agent2"
"""


class Harness:
    """A Node with three fake sessions (no sockets, no TLS): the parent m1 and two agents."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        cfg = parse_config(CONFIG)
        self.node = Node(cfg, self.loop, server_context=object(),  # type: ignore[arg-type]
                         client_context=object())  # type: ignore[arg-type]
        self.conns = {name: self._session(name) for name in ("m1", "agent1", "agent2")}

    def _session(self, name: str) -> PeerConnection:
        node = self.node
        conn = PeerConnection(node, object())  # type: ignore[arg-type]
        conn.state = "open"
        conn.address = f"127.0.0.1:{len(node.connections) + 40000}"
        conn.endpoint = conn.identity = name
        conn.stats = node.endpoint_stats(name)
        conn.queue = SendQueue(node.queue_limits)
        node.connections[name] = conn
        node.connected_names.add(name)
        node.all_connections.add(conn)
        return conn

    def snapshot(self) -> tuple:
        node = self.node
        queues = {n: len(c.queue) for n, c in self.conns.items()}
        results = {(r.host, r.service): r.cr.get("output") for r in node.results.select()}
        return queues, results, node.objects.learned, {n: c.state for n, c in
                                                        self.conns.items()}

    def close(self) -> None:
        # The loop never ran: tasks the node made (a certificate request's worker) are
        # cancelled and run to their end, not left as never-awaited coroutines.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6)


@st.composite
def mutated_messages(draw) -> tuple[str, bytes, str | None]:
    method = draw(st.sampled_from(sorted(VALID)))
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method,
                               "params": copy.deepcopy(VALID[method])}
    fields = [name for name, _ in FIELDS.get(method, ())] or ["host"]
    where = draw(st.sampled_from([*fields, "@params", "@ts", "@originZone", "@id"]))
    value = draw(_json)
    if where.startswith("@"):
        message[where[1:]] = value
        field = None
    else:
        message["params"][where] = value
        field = where
    return method, orjson.dumps(message), field


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_messages())
def test_property_any_field_any_type_nothing_escapes(example) -> None:
    method, payload, field = example
    h = Harness()
    try:
        node = h.node
        sender = h.conns["agent1"]
        msg = jsonrpc.parse_message(payload)
        problem = check_params(method, msg.params)
        before = h.snapshot()
        refused_before = dict(sender.stats.refused)
        node.on_message(sender, msg)          # must not raise, whatever the field holds
        if problem is not None:
            assert problem.field == field
            key = (method, "invalid_field")
            assert sender.stats.refused.get(key, 0) == refused_before.get(key, 0) + 1
            assert h.snapshot() == before      # nothing queued, stored, learned or closed
        assert all(c.state == "open" for n, c in h.conns.items() if n != "agent1")
        assert not h.conns["agent2"].stats.refused and not h.conns["m1"].stats.refused
    finally:
        h.close()


def test_budget_closes_only_the_offender_sans_tls() -> None:
    h = Harness()
    try:
        node = h.node
        object.__setattr__(node.config.limits, "max_invalid_messages", 3)
        bad = orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult",
                            "params": {"host": "agent1", "service": {"a": 1}, "cr": CR}})
        for _ in range(3):
            node.on_message(h.conns["agent1"], jsonrpc.parse_message(bad))
        assert h.conns["agent1"].state == "open"
        node.on_message(h.conns["agent1"], jsonrpc.parse_message(bad))
        assert h.conns["agent1"].state == "closing"
        assert node.disconnects.get(("invalid_messages",)) == 1
        assert h.conns["agent2"].state == "open" and h.conns["m1"].state == "open"
    finally:
        h.close()


# -- over TLS ---------------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "agent1", "agent2"])


def test_wrong_types_over_tls_refused_counted_session_stays_then_budget(tmp_path, pki, run,
                                                                         caplog):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master")],
                       limits="max_invalid_messages = 5")

    async def main():
        master = await spec.start("master")
        try:
            a1 = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                        server_name="master")
            a2 = await FakePeer.connect(spec.port("master"), pki, "agent2",
                                        server_name="master")
            bad = check_result("agent1", None, "x")
            bad["service"] = {"a": 1}              # used to raise TypeError in the node
            a1.send("event::CheckResult", bad)
            a1.send("event::CheckResult", check_result("agent1", "disk", "fine"))
            node = master.node
            await wait_until(lambda: node.results.get("agent1", "disk") is not None,
                             what="the good result after the bad one")
            stats = node.stats["agent1"]
            assert stats.refused[("event::CheckResult", "invalid_field")] == 1
            assert "[agent1 127.0.0.1:" in caplog.text
            assert ("refused event::CheckResult: parameter 'service' must be string or "
                    "null, got object (invalid_field)") in caplog.text
            assert "Traceback" not in caplog.text
            text = await metrics_text(master)
            assert ('router_messages_refused_total{endpoint="agent1",method='
                    '"event::CheckResult",reason="invalid_field"} 1') in text
            for _ in range(5):
                a1.send("event::SetNextCheck", {"host": "agent1", "next_check": "soon"})
            await a1.wait_closed()
            assert node.disconnects.get(("invalid_messages",)) == 1
            # the other agent is untouched
            a2.send("event::CheckResult", check_result("agent2", "load", "ok"))
            await wait_until(lambda: node.results.get("agent2", "load") is not None,
                             what="agent2 unaffected")
            assert not a2.closed
            await a1.close()
            await a2.close()
        finally:
            await master.stop()

    run(main())
