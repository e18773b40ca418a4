"""Wire decoding and validation: every refusal names its reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from persona.v1 import events_pb2

from contract.codec import BadRecord, decode_event, event_to_json, event_to_proto
from contract.events import Event
from contract.record import record_from_proto, unpack_record
from services.config import WindowConfig

NOW = 1_763_900_000_000
CFG = WindowConfig()
EV = Event("u1", "e9", 1_732_345_678_123, "click", {"item": "i42", "price": 9.99})


def reason(value: bytes | None) -> str:
    with pytest.raises(BadRecord) as info:
        decode_event(value, CFG, NOW)
    return info.value.reason


def test_proto_and_json_decode_to_the_same_event() -> None:
    assert decode_event(event_to_proto(EV), CFG, NOW) == EV
    assert decode_event(event_to_json(EV), CFG, NOW) == EV


def test_json_shape_of_the_issue_is_accepted() -> None:
    raw = (
        b'{"user_id": "u1", "event_id": "e9", "ts_ms": 1732345678123, "type": "click",'
        b' "props": {"item": "i42", "price": 9.99, "qty": 2}}'
    )
    ev = decode_event(raw, CFG, NOW)
    assert ev.props == {"item": "i42", "price": 9.99, "qty": 2.0}
    assert json.loads(event_to_json(ev))["props"]["item"] == "i42"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "undecodable"),
        (b"", "undecodable"),
        (b"\xff\xfe\x00garbage", "undecodable"),
        (b'{"user_id": "u1", "event_id": ', "undecodable"),
        (b"[1, 2]", "undecodable"),
        (b'{"event_id": "e", "ts_ms": 5, "type": "t"}', "missing_user_id"),
        (b'{"user_id": "", "event_id": "e", "ts_ms": 5, "type": "t"}', "missing_user_id"),
        (b'{"user_id": "u", "ts_ms": 5, "type": "t"}', "missing_event_id"),
        (b'{"user_id": "u", "event_id": "e", "ts_ms": "5", "type": "t"}', "bad_timestamp"),
        (b'{"user_id": "u", "event_id": "e", "ts_ms": true, "type": "t"}', "bad_timestamp"),
        (b'{"user_id": "u", "event_id": "e", "ts_ms": -1, "type": "t"}', "bad_timestamp"),
        (b'{"user_id": "u", "event_id": "e", "ts_ms": 5}', "missing_type"),
        (b'{"user_id": "u", "event_id": "e", "ts_ms": 5, "type": "t", "props": [1]}', "bad_props"),
        (
            b'{"user_id": "u", "event_id": "e", "ts_ms": 5, "type": "t", "props": {"a": {"b": 1}}}',
            "bad_props",
        ),
        (b'{"user_id": "\\ud800", "event_id": "e", "ts_ms": 5, "type": "t"}', "undecodable"),
        (events_pb2.Event(event_id="e", ts_ms=5, type="t").SerializeToString(), "missing_user_id"),
        (events_pb2.Event(user_id="u", ts_ms=5, type="t").SerializeToString(), "missing_event_id"),
    ],
)
def test_bad_records_get_a_reason(value: bytes | None, why: str) -> None:
    assert reason(value) == why


def test_future_timestamp_is_refused_but_near_future_accepted() -> None:
    day = 86_400_000
    ok = Event("u", "e", NOW + day // 2, "t")
    assert decode_event(event_to_proto(ok), CFG, NOW) == ok
    far = Event("u", "e", NOW + 2 * day, "t")
    assert reason(event_to_proto(far)) == "future_timestamp"


def test_json_booleans_are_numbers_and_nulls_absent_as_in_event_files() -> None:
    """Train / serve parity with encoder/io.py: a model trained on a file whose `member` is
    a boolean reads live JSON events carrying it the same way (they were dead-lettered)."""
    value = b'{"user_id": "u", "event_id": "e", "ts_ms": 5, "type": "t", "props": '
    value += b'{"member": true, "off": false, "gone": null, "k": "x"}}'
    want = Event("u", "e", 5, "t", {"member": 1.0, "off": 0.0, "k": "x"})
    assert decode_event(value, CFG, NOW) == want
    from contract.codec import decode_for_store

    assert unpack_record("u", "e", decode_for_store(value, CFG, NOW).record) == want


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = Event("u", "e", 5, "t", {"blob": "x" * 70_000})
    assert reason(event_to_proto(big)) == "oversized"


def test_limits_on_ids_props_and_values() -> None:
    assert reason(event_to_proto(Event("u" * 300, "e", 5, "t"))) == "too_long"
    assert reason(event_to_proto(Event("u", "e", 5, "t", {f"p{i}": 1.0 for i in range(65)}))) == (
        "bad_props"
    )
    assert reason(event_to_proto(Event("u", "e", 5, "t", {"v": "x" * 2000}))) == "bad_props"
    nan = b'{"user_id": "u", "event_id": "e", "ts_ms": 5, "type": "t", "props": {"p": NaN}}'
    assert reason(nan) == "bad_props"


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    deep = b'{"user_id": "u", "event_id": "e", "ts_ms": 5, "type": "t", "props": ' + (
        b"[" * 100_000 + b"]" * 100_000 + b"}"
    )
    assert reason(deep[: CFG.max_payload_bytes]) in {"undecodable", "bad_props"}


def test_small_protobuf_records_take_the_fast_path_with_the_same_refusals() -> None:
    nan = events_pb2.Event(user_id="u", event_id="e", ts_ms=5, type="t", num={"p": float("nan")})
    assert len(nan.SerializeToString()) < 64
    assert reason(nan.SerializeToString()) == "bad_props"
    empty = events_pb2.Event(user_id="u", event_id="e", ts_ms=5, type="t", cat={"": "x"})
    assert reason(empty.SerializeToString()) == "bad_props"
    both = events_pb2.Event(
        user_id="u", event_id="e", ts_ms=5, type="t", cat={"a": "x"}, num={"a": 1}
    )
    assert reason(both.SerializeToString()) == "bad_props"
    assert reason(
        events_pb2.Event(user_id="u", event_id="e", ts_ms=-5, type="t").SerializeToString()
    ) == ("bad_timestamp")


def test_decode_for_store_gives_the_record_of_the_same_event() -> None:
    from contract.codec import decode_for_store

    for raw in (event_to_proto(EV), event_to_json(EV)):
        d = decode_for_store(raw, CFG, NOW)
        assert (d.user_id, d.event_id, d.ts_ms) == ("u1", b"e9", EV.ts_ms)
        assert unpack_record("u1", "e9", d.record) == EV


def _longest_json_under_the_limit(value_len: int) -> bytes:
    props = {f"{i:03d}" + "k" * 197: "v" * value_len for i in range(CFG.max_props)}
    return event_to_json(Event("u", "e", NOW, "t", props))


def test_a_record_longer_than_the_store_takes_is_oversized_not_a_crash() -> None:
    """The store reads a record's length as 2 bytes: a JSON value under the payload limit
    whose record (protobuf framing on every property) is longer, and a protobuf value let
    through by a raised limit, are dead-lettered "oversized" (they once raised struct.error
    in the consumer's batch step, outside the per-record handling: the partition stalled)."""
    from contract.codec import decode_for_store
    from contract.record import MAX_RECORD_BYTES

    value = next(
        v
        for n in range(800, 1000)
        if len(v := _longest_json_under_the_limit(n)) <= CFG.max_payload_bytes
        and len(pack_json_record(v)) > MAX_RECORD_BYTES
    )
    decode_event(value, CFG, NOW)  # a valid event ...
    with pytest.raises(BadRecord) as info:
        decode_for_store(value, CFG, NOW)  # ... whose record the store cannot take
    assert info.value.reason == "oversized" and "stored record" in info.value.detail
    raised = WindowConfig(max_payload_bytes=200_000, max_value_bytes=100_000)
    big = event_to_proto(Event("u", "e", NOW, "t", {"blob": "x" * 70_000}))
    with pytest.raises(BadRecord) as info:
        decode_for_store(big, raised, NOW)
    assert info.value.reason == "oversized"
    fits = event_to_proto(Event("u", "e", NOW, "t", {"blob": "x" * 60_000}))
    assert len(decode_for_store(fits, raised, NOW).record) <= MAX_RECORD_BYTES


def pack_json_record(value: bytes) -> bytes:
    from contract.record import pack_record

    return pack_record(decode_event(value, CFG, NOW))


def test_kafka_security_comes_from_the_environment(tmp_path: object) -> None:
    from pathlib import Path

    from services.common.kafka import rdkafka_config

    assert rdkafka_config("b:9092", "me", {}) == {"bootstrap.servers": "b:9092", "client.id": "me"}
    pw = Path(str(tmp_path)) / "pw"
    pw.write_text("s3cret\n")
    got = rdkafka_config(
        "b:9092",
        "me",
        {
            "PERSONA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PERSONA_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "PERSONA_KAFKA_SASL_USERNAME": "persona",
            "PERSONA_KAFKA_SASL_PASSWORD_FILE": str(pw),
            "PERSONA_KAFKA_SASL_PASSWORD": "ignored when a file is given",
            "PERSONA_KAFKA_SSL_CAFILE": "/etc/ca.pem",
        },
    )
    assert got == {
        "bootstrap.servers": "b:9092",
        "client.id": "me",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "persona",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
    }
    rd = rdkafka_config(
        "b:9092", "me", {"PERSONA_KAFKA_SASL_PASSWORD": "p", "PERSONA_KAFKA_SSL_KEYFILE": "/k"}
    )
    assert rd == {"bootstrap.servers": "b:9092", "client.id": "me", "sasl.password": "p",
                  "ssl.key.location": "/k"}  # fmt: skip


def test_protobuf_whose_bytes_look_like_json_after_a_newline_is_protobuf() -> None:
    # Field 1's tag is 0x0A ("\n"); a 123-byte user id puts 0x7B ("{") right after it.
    ev = Event("{" + "u" * 122, "e1", 5, "view", {"item": "i1"})
    raw = event_to_proto(ev)
    assert raw[:2] == b"\n{"
    assert decode_event(raw, CFG, NOW) == ev
    assert decode_event(b'\n  {"user_id": "u", "event_id": "e", "ts_ms": 5, "type": "t"}', CFG, NOW)


_text = st.text(min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(
    uid=_text,
    eid=_text,
    ts=st.integers(1, NOW),
    cat=st.dictionaries(_text, st.text(max_size=50), max_size=4),
    extra=st.sampled_from([b"", b"\x0a\x01z", b"\x12\x01q"]),  # a repeated id field at the end
)
def test_record_sliced_off_the_wire_equals_the_reserialized_record(
    uid: str, eid: str, ts: int, cat: dict[str, str], extra: bytes
) -> None:
    from contract.codec import decode_for_store

    wire = events_pb2.Event(user_id=uid, event_id=eid, ts_ms=ts, type="t", cat=cat)
    value = wire.SerializeToString() + extra
    d = decode_for_store(value, WindowConfig(max_id_bytes=1024), NOW)
    msg = events_pb2.Event.FromString(value)
    assert (d.user_id, d.event_id) == (msg.user_id, msg.event_id.encode())
    slow = record_from_proto(events_pb2.Event.FromString(value))
    got = unpack_record(d.user_id, msg.event_id, d.record)
    assert got == unpack_record(d.user_id, msg.event_id, slow)
