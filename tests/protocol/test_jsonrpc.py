"""JSON-RPC payloads: parsing rules, encoders and the relay re-encoding."""

from __future__ import annotations

import copy

import orjson
import pytest

from router.errors import InvalidMessage
from router.protocol import jsonrpc
from router.protocol.jsonrpc import (
    Message,
    encode,
    error_response,
    notification,
    parse_message,
    relay_payload,
    response,
)

# The golden messages of /work/shared/icinga-protocol.md, each with the method, ts,
# originZone and id that parse_message must extract from it.
Golden = tuple[bytes, str | None, float | None, str | None, str | None]
GOLDEN: list[Golden] = [
    (b'{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21306}}',
     'icinga::Hello', None, None, None),
    (b'{"jsonrpc":"2.0","method":"log::SetLogPosition","params":{"log_position":1700000123.456789}}',  # noqa: E501
     'log::SetLogPosition', None, None, None),
    (b'{"jsonrpc":"2.0","method":"event::CheckResult","params":{"cr":{"active":true,"check_source":"sat1.example.com","command":["/usr/lib/nagios/plugins/check_http","-H","10.0.0.5"],"execution_end":1700000100.52,"execution_start":1700000100.31,"exit_status":0,"output":"HTTP OK: HTTP/1.1 200 OK","performance_data":["time=0.21s;;;0"],"previous_hard_state":0,"schedule_end":1700000100.52,"schedule_start":1700000100.0,"scheduling_source":"sat1.example.com","state":0,"ttl":0,"type":"CheckResult","vars_after":{"attempt":1,"reachable":true,"state":0,"state_type":1},"vars_before":{"attempt":1,"reachable":true,"state":0,"state_type":1}},"host":"web01","service":"http"},"ts":1700000100.53}',  # noqa: E501
     'event::CheckResult', 1700000100.53, None, None),
    (b'{"jsonrpc":"2.0","method":"event::CheckResult","originZone":"satellite","params":{"cr":{"active":true,"check_source":"sat2.example.com","command":"ping","execution_end":1700000200.2,"execution_start":1700000200.0,"exit_status":2,"output":"PING CRITICAL - Packet loss = 100%","performance_data":[],"previous_hard_state":0,"schedule_end":1700000200.2,"schedule_start":1700000200.0,"scheduling_source":"sat2.example.com","state":1,"ttl":0,"type":"CheckResult","vars_after":{"attempt":1,"reachable":true,"state":1,"state_type":0},"vars_before":null},"host":"web01"},"ts":1700000200.25}',  # noqa: E501
     'event::CheckResult', 1700000200.25, 'satellite', None),
    (b'{"jsonrpc":"2.0","method":"event::SetNextCheck","params":{"host":"web01","next_check":1700000400.0,"service":"http"},"ts":1700000101.0}',  # noqa: E501
     'event::SetNextCheck', 1700000101.0, None, None),
    (b'{"jsonrpc":"2.0","method":"event::SetAcknowledgement","params":{"acktype":1,"author":"admin","change_time":1700000300.0,"comment":"working on it","expiry":0,"host":"web01","notify":true,"persistent":false,"service":"http"},"ts":1700000300.01}',  # noqa: E501
     'event::SetAcknowledgement', 1700000300.01, None, None),
    (b'{"jsonrpc":"2.0","method":"event::ExecuteCommand","params":{"check_timeout":30,"command":"disk","command_type":"check_command","host":"agent1.example.com","macros":{"disk_cfree":"10%","disk_partitions":["/"],"disk_wfree":"20%"},"service":"disk"}}',  # noqa: E501
     'event::ExecuteCommand', None, None, None),
    (b'{"jsonrpc":"2.0","method":"event::CheckResult","params":{"cr":{"active":true,"check_source":"agent1.example.com","command":["/usr/lib/nagios/plugins/check_disk","-c","10%","-w","20%","-p","/"],"execution_end":1700000500.1,"execution_start":1700000500.0,"exit_status":0,"output":"DISK OK","performance_data":["/=2048MB;8000;9000;0;10000"],"previous_hard_state":0,"schedule_end":1700000500.1,"schedule_start":1700000500.0,"scheduling_source":"agent1.example.com","state":0,"ttl":0,"type":"CheckResult","vars_after":{"attempt":1,"reachable":true,"state":0,"state_type":1},"vars_before":null},"host":"agent1.example.com","service":"disk"}}',  # noqa: E501
     'event::CheckResult', None, None, None),
    (b'{"jsonrpc":"2.0","method":"event::ExecuteCommand","params":{"command":"hostalive","command_type":"check_command","deadline":1700000630.0,"endpoint":"agent1.example.com","host":"agent1.example.com","macros":{"address":"10.0.0.7"},"source":"0b9f6c2e-3f1a-4c55-9d7e-2a6a1d8e4f10"},"ts":1700000600.0}',  # noqa: E501
     'event::ExecuteCommand', 1700000600.0, None, None),
    (b'{"jsonrpc":"2.0","method":"event::ExecutedCommand","params":{"end":1700000601.2,"execution":"0b9f6c2e-3f1a-4c55-9d7e-2a6a1d8e4f10","exit":0,"host":"agent1.example.com","output":"PING OK - Packet loss = 0%","start":1700000601.0}}',  # noqa: E501
     'event::ExecutedCommand', None, None, None),
    (b'{"jsonrpc":"2.0","method":"event::UpdateExecutions","params":{"executions":{"0b9f6c2e-3f1a-4c55-9d7e-2a6a1d8e4f10":{"deadline":1700000630.0,"end":1700000601.2,"exit":0,"output":"PING OK - Packet loss = 0%","start":1700000601.0}},"host":"agent1.example.com"},"ts":1700000601.3}',  # noqa: E501
     'event::UpdateExecutions', 1700000601.3, None, None),
    (b'{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{"ticket":"45e924c693ca6333141014ff7cb71356ee439ea8"}}',  # noqa: E501
     'pki::RequestCertificate', None, None, None),
    (b'{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{"cert_request":"-----BEGIN CERTIFICATE-----\\nMIIF...\\n-----END CERTIFICATE-----\\n","ticket":"45e924c693ca6333141014ff7cb71356ee439ea8"},"ts":1700000700.0}',  # noqa: E501
     'pki::RequestCertificate', 1700000700.0, None, None),
    (b'{"id":"7d0e1c9a-8a1b-4c1e-9d3c-5e1f0a2b3c4d","jsonrpc":"2.0","method":"pki::RequestCertificate","params":{"ticket":"45e924c693ca6333141014ff7cb71356ee439ea8"}}',  # noqa: E501
     'pki::RequestCertificate', None, None, '7d0e1c9a-8a1b-4c1e-9d3c-5e1f0a2b3c4d'),
    (b'{"id":"7d0e1c9a-8a1b-4c1e-9d3c-5e1f0a2b3c4d","jsonrpc":"2.0","result":{"ca":"-----BEGIN CERTIFICATE-----\\n...","cert":"-----BEGIN CERTIFICATE-----\\n...","fingerprint_request":"9c1f0e5d4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0","status_code":0}}',  # noqa: E501
     None, None, None, '7d0e1c9a-8a1b-4c1e-9d3c-5e1f0a2b3c4d'),
    (b'{"jsonrpc":"2.0","method":"pki::UpdateCertificate","params":{"ca":"-----BEGIN CERTIFICATE-----\\n...","cert":"-----BEGIN CERTIFICATE-----\\n...","fingerprint_request":"9c1f0e5d4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0","status_code":0}}',  # noqa: E501
     'pki::UpdateCertificate', None, None, None),
    (b'{"id":"7d0e1c9a-8a1b-4c1e-9d3c-5e1f0a2b3c4d","jsonrpc":"2.0","result":{"ca":"-----BEGIN CERTIFICATE-----\\n...","error":"Certificate request for CN \'agent1.example.com\' is pending. Waiting for approval from the parent Icinga instance.","fingerprint_request":"9c1f0e5d4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0","status_code":2}}',  # noqa: E501
     None, None, None, '7d0e1c9a-8a1b-4c1e-9d3c-5e1f0a2b3c4d'),
    (b'{"jsonrpc":"2.0","method":"config::Update","params":{"checksums":{"global-templates":{"/.checksums":"<sha256hex>","/.timestamp":"<sha256hex>","/_etc/commands.conf":"<sha256hex>"}},"update":{"global-templates":{"/_etc/commands.conf":"object CheckCommand \\"my-check\\" {\\n  command = [ \\"/bin/true\\" ]\\n}\\n"}},"update_v2":{"global-templates":{"/.checksums":"{\\"/_etc/commands.conf\\":\\"<sha256hex>\\"}","/.timestamp":"1700000000.000000"}}}}',  # noqa: E501
     'config::Update', None, None, None),
    (b'{"jsonrpc":"2.0","method":"config::UpdateObject","params":{"config":"object Downtime \\"5c2a\xe2\x80\xa6\\" ignore_on_error {\\n\\tauthor = \\"admin\\"\\n\\t\xe2\x80\xa6\\n}\\n","modified_attributes":{},"name":"web01!http!5c2a\xe2\x80\xa6","original_attributes":[],"type":"Downtime","version":1700000800.5,"zone":"master"},"ts":1700000800.6}',  # noqa: E501
     'config::UpdateObject', 1700000800.6, None, None),
    (b'{"jsonrpc":"2.0","method":"config::DeleteObject","params":{"name":"web01!http!5c2a\xe2\x80\xa6","type":"Downtime","version":1700000800.5},"ts":1700000900.0}',  # noqa: E501
     'config::DeleteObject', 1700000900.0, None, None),
    (b'{"jsonrpc":"2.0","method":"event::SetRemovalInfo","params":{"object_name":"web01!http!5c2a\xe2\x80\xa6","object_type":"Downtime","remove_time":1700000899.9,"removed_by":"admin"},"ts":1700000899.95}',  # noqa: E501
     'event::SetRemovalInfo', 1700000899.95, None, None),
    (b'{"message":"{\\"jsonrpc\\":\\"2.0\\",\\"method\\":\\"event::SetNextCheck\\",\\"params\\":{\\"host\\":\\"web01\\",\\"next_check\\":1700000400.0,\\"service\\":\\"http\\"},\\"ts\\":1700000101.0}","secobj":{"name":"web01!http","type":"Service"},"timestamp":1700000101.0}',  # noqa: E501
     None, None, None, None),
]


# -- golden messages -------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "method", "ts", "origin_zone", "id_"), GOLDEN,
                         ids=[f"golden{i}" for i in range(len(GOLDEN))])
def test_golden_messages_parse(raw: bytes, method: str | None, ts: float | None,
                               origin_zone: str | None, id_: str | None) -> None:
    msg = parse_message(raw)
    assert msg.raw is raw
    assert msg.data == orjson.loads(raw)
    assert msg.method == method
    assert msg.ts == ts
    assert msg.origin_zone == origin_zone
    assert msg.id == id_
    expected_params = msg.data.get("params")
    assert msg.params == (expected_params if isinstance(expected_params, dict) else None)


def test_golden_hello_is_what_notification_writes() -> None:
    assert notification("icinga::Hello", {"version": 21306, "capabilities": 1}) == GOLDEN[0][0]


def test_golden_heartbeat_is_what_notification_writes() -> None:
    assert notification("event::Heartbeat", {}) == \
        b'{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}'


def test_golden_check_result_fields() -> None:
    msg = parse_message(GOLDEN[2][0])
    assert msg.params is not None
    assert msg.params["host"] == "web01" and msg.params["service"] == "http"
    assert msg.params["cr"]["performance_data"] == ["time=0.21s;;;0"]


# -- parse_message: refusals --------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"[]", b"1", b'"x"', b"null", b"true", b'[{"method":"a"}]'])
def test_top_level_must_be_an_object(payload: bytes) -> None:
    with pytest.raises(InvalidMessage, match="^JSON-RPC message must be an object$"):
        parse_message(payload)


@pytest.mark.parametrize("payload", [
    b"",                                    # the payload of the legal frame 0:,
    b"{", b"{]", b'{"a":}', b"{'a':1}", b'{"a":1}x', b'{"a":NaN}', b'{"a":1e400}',
    b'{"a":"\\ud800"}', b"\x00",
])
def test_invalid_json(payload: bytes) -> None:
    with pytest.raises(InvalidMessage, match="invalid JSON"):
        parse_message(payload)


def test_invalid_json_with_invalid_utf8_is_still_invalid() -> None:
    with pytest.raises(InvalidMessage):
        parse_message(b'{"method":"\xff"')


def test_invalid_message_is_a_protocol_error_with_its_reason() -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(b"{")
    assert info.value.reason == "invalid_message"


# -- parse_message: depth -------------------------------------------------------------

def nested(depth: int) -> bytes:
    """An object nested ``depth`` containers deep, the top level counting as 1."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def test_depth_at_the_limit_is_accepted() -> None:
    assert parse_message(nested(3), max_depth=3).data == {"a": {"a": {}}}


def test_depth_above_the_limit_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="deeper than 3"):
        parse_message(nested(4), max_depth=3)


def test_lists_count_as_nesting() -> None:
    with pytest.raises(InvalidMessage):
        parse_message(b'{"a":[[[]]]}', max_depth=3)
    assert parse_message(b'{"a":[[]]}', max_depth=3).data == {"a": [[]]}


def test_brackets_inside_strings_do_not_count() -> None:
    payload = b'{"method":"x","params":{"output":"[[[[{{{{[[[["}}'
    assert parse_message(payload, max_depth=2).params == {"output": "[[[[{{{{[[[["}


def test_wide_but_shallow_message_is_accepted() -> None:
    payload = orjson.dumps({"params": {f"k{i}": [{"x": []}] for i in range(500)}})
    assert parse_message(payload, max_depth=5).params is not None


def test_default_max_depth_is_128() -> None:
    assert parse_message(nested(128)).data is not None
    with pytest.raises(InvalidMessage):
        parse_message(nested(129))


@pytest.mark.parametrize("depth", [1000, 1025, 10_000])
def test_very_deep_message_is_invalid_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(InvalidMessage):
        parse_message(nested(depth))
    with pytest.raises(InvalidMessage):
        parse_message(b'{"a":' + b"[" * depth + b"]" * depth + b"}")


def test_depth_walk_is_iterative_even_near_orjsons_limit() -> None:
    assert parse_message(nested(1000), max_depth=1000).data is not None


# -- parse_message: fields --------------------------------------------------------------

def test_invalid_utf8_is_replaced_not_refused() -> None:
    payload = b'{"method":"event::CheckResult","params":{"output":"caf\xe9 \xff"}}'
    msg = parse_message(payload)
    assert msg.raw == payload
    assert msg.method == "event::CheckResult"
    assert msg.params == {"output": "caf\ufffd \ufffd"}


@pytest.mark.parametrize("method", [None, 1, 1.5, True, [], {}, ["a"]])
def test_unusable_method_is_none(method: object) -> None:
    data = {"params": {}} if method is None else {"method": method, "params": {}}
    assert parse_message(orjson.dumps(data)).method is None


@pytest.mark.parametrize("params", [None, [], "x", 1, True])
def test_params_that_are_not_an_object_are_none(params: object) -> None:
    msg = parse_message(orjson.dumps({"method": "m", "params": params}))
    assert msg.params is None


def test_missing_params_is_none() -> None:
    assert parse_message(b'{"method":"m"}').params is None


@pytest.mark.parametrize(("raw_ts", "ts"), [
    (b"1700000400", 1700000400.0), (b"1700000400.0", 1700000400.0),
    (b"1700000100.53", 1700000100.53), (b"0", 0.0), (b"-1.5", -1.5),
    (b"18446744073709551616", 18446744073709551616.0),
])
def test_numeric_ts_in_either_form(raw_ts: bytes, ts: float) -> None:
    msg = parse_message(b'{"method":"m","ts":' + raw_ts + b"}")
    assert msg.ts == ts and type(msg.ts) is float


@pytest.mark.parametrize("raw_ts", [b"true", b"false", b'"1700000400"', b"null", b"[]", b"{}"])
def test_non_numeric_ts_is_none(raw_ts: bytes) -> None:
    assert parse_message(b'{"method":"m","ts":' + raw_ts + b"}").ts is None


@pytest.mark.parametrize(("raw_zone", "zone"), [
    (b'"satellite"', "satellite"), (b'""', ""), (b"1", None), (b"null", None), (b"[]", None),
])
def test_origin_zone(raw_zone: bytes, zone: str | None) -> None:
    assert parse_message(b'{"method":"m","originZone":' + raw_zone + b"}").origin_zone == zone


@pytest.mark.parametrize(("raw_id", "id_"), [(b'"abc"', "abc"), (b"7", 7), (b"null", None)])
def test_id(raw_id: bytes, id_: object) -> None:
    assert parse_message(b'{"id":' + raw_id + b',"method":"m"}').id == id_


def test_missing_id_is_none() -> None:
    assert parse_message(b'{"method":"m"}').id is None


def test_message_is_slotted() -> None:
    msg = parse_message(b"{}")
    with pytest.raises(AttributeError):
        msg.extra = 1  # type: ignore[attr-defined]


# -- encoders --------------------------------------------------------------------------

def test_encode_is_compact_orjson() -> None:
    data = {"b": 1, "a": [1.5, "é"], "c": None}
    assert encode(data) == orjson.dumps(data) == '{"b":1,"a":[1.5,"é"],"c":null}'.encode()


def test_notification_with_and_without_ts() -> None:
    assert notification("event::SetNextCheck", {"host": "web01"}, ts=1700000101.5) == (
        b'{"jsonrpc":"2.0","method":"event::SetNextCheck","params":{"host":"web01"},'
        b'"ts":1700000101.5}')
    assert b"ts" not in notification("m", {})


def test_response_has_icingas_shape() -> None:
    assert response("7d0e", {"status_code": 0}) == \
        b'{"id":"7d0e","jsonrpc":"2.0","result":{"status_code":0}}'


def test_error_response_carries_plain_text() -> None:
    assert error_response(3, "boom") == b'{"error":"boom","id":3,"jsonrpc":"2.0"}'


# -- relay_payload --------------------------------------------------------------------

CHECK_RESULT_WITHOUT_PERFDATA = (
    b'{"jsonrpc":"2.0","method":"event::CheckResult","originZone":"old",'
    b'"params":{"cr":{"output":"OK","state":0},"host":"web01"},"ts":1.0}')


def relayed(msg: Message, ts: float = 1700000999.25, zone: str | None = "satellite") -> dict:
    return orjson.loads(relay_payload(msg, ts, zone))


@pytest.mark.parametrize("index", range(len(GOLDEN)))
def test_relay_never_mutates_the_parsed_message(index: int) -> None:
    msg = parse_message(GOLDEN[index][0])
    before = copy.deepcopy(msg.data)
    relay_payload(msg, 1700000999.25, "satellite")
    relay_payload(msg, 1700000999.5, None)
    assert msg.data == before


def test_relay_restamps_ts_and_sets_origin_zone() -> None:
    out = relayed(parse_message(GOLDEN[2][0]))
    assert out["ts"] == 1700000999.25
    assert out["originZone"] == "satellite"
    expected = orjson.loads(GOLDEN[2][0]) | {"ts": 1700000999.25, "originZone": "satellite"}
    assert out == expected


def test_relay_removes_origin_zone_when_none() -> None:
    out = relayed(parse_message(GOLDEN[3][0]), zone=None)
    assert "originZone" not in out
    assert out["ts"] == 1700000999.25


def test_relay_adds_ts_when_the_original_had_none() -> None:
    out = relayed(parse_message(GOLDEN[7][0]), ts=5.0, zone=None)
    assert out["ts"] == 5.0 and "originZone" not in out


def test_relay_adds_empty_performance_data_to_check_results() -> None:
    msg = parse_message(CHECK_RESULT_WITHOUT_PERFDATA)
    out = relayed(msg)
    assert out["params"]["cr"] == {"output": "OK", "state": 0, "performance_data": []}
    assert out["params"]["host"] == "web01"
    assert "performance_data" not in msg.data["params"]["cr"]


def test_relay_keeps_existing_performance_data() -> None:
    out = relayed(parse_message(GOLDEN[2][0]))
    assert out["params"]["cr"]["performance_data"] == ["time=0.21s;;;0"]
    out = relayed(parse_message(
        b'{"method":"event::CheckResult","params":{"cr":{"performance_data":null}}}'))
    assert out["params"]["cr"]["performance_data"] is None


@pytest.mark.parametrize("payload", [
    b'{"method":"event::CheckResult","params":{"cr":"x"}}',
    b'{"method":"event::CheckResult","params":{"host":"h"}}',
    b'{"method":"event::CheckResult","params":[1]}',
    b'{"method":"event::CheckResult"}',
    b'{"method":"event::SetNextCheck","params":{"cr":{}}}',
])
def test_relay_leaves_other_shapes_alone(payload: bytes) -> None:
    out = relayed(parse_message(payload))
    expected = orjson.loads(payload) | {"ts": 1700000999.25, "originZone": "satellite"}
    assert out == expected


def test_relay_output_parses_back() -> None:
    for raw, *_ in GOLDEN:
        again = parse_message(relay_payload(parse_message(raw), 42.5, "z"))
        assert again.ts == 42.5 and again.origin_zone == "z"


def test_check_result_method_constant() -> None:
    assert jsonrpc.CHECK_RESULT_METHOD == "event::CheckResult"
