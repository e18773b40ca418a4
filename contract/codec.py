"""Kafka record value <-> `Event`, with validation that names what is wrong.

A value is either a serialized `persona.v1.Event` protobuf or the same record as JSON
(a value whose first non-blank byte is `{`). Anything the consumer must not apply raises
`BadRecord(reason, detail)`; the reason is a short stable code used as a metric label and
in the dead-letter header, the detail is for people.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import NamedTuple, Protocol

from google.protobuf.message import DecodeError
from persona.v1 import events_pb2

from contract.events import Event, PropValue
from contract.record import MAX_RECORD_BYTES, pack_record, record_from_wire

_EVENT = events_pb2.Event

REASONS = (
    "oversized",
    "undecodable",
    "missing_user_id",
    "missing_event_id",
    "bad_timestamp",
    "future_timestamp",
    "missing_type",
    "bad_props",
    "too_long",
    "decode_error",  # the decoder itself failed (a bug): the record is kept, not applied
)


class Limits(Protocol):
    """What a record may hold (`services.config.WindowConfig` carries these)."""

    @property
    def max_future_ms(self) -> int: ...  # an event stamped further ahead is refused
    @property
    def max_payload_bytes(self) -> int: ...
    @property
    def max_id_bytes(self) -> int: ...  # user id, event id, type, prop names
    @property
    def max_props(self) -> int: ...
    @property
    def max_value_bytes(self) -> int: ...  # a categorical prop's value


class Decoded(NamedTuple):
    user_id: str
    event_id: bytes  # UTF-8
    ts_ms: int
    record: bytes  # the stored event record (contract.record)


class BadRecord(ValueError):
    """A record that goes to the dead-letter topic instead of a window."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def event_to_proto(ev: Event) -> bytes:
    msg = events_pb2.Event(user_id=ev.user_id, event_id=ev.event_id, ts_ms=ev.ts_ms, type=ev.type)
    for k, v in ev.props.items():
        if isinstance(v, str):
            msg.cat[k] = v
        else:
            msg.num[k] = float(v)
    return msg.SerializeToString()


def event_to_json(ev: Event) -> bytes:
    return json.dumps(ev.to_json_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def _from_json(value: bytes) -> Event:
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, UnicodeDecodeError, and an integer longer than
        # Python's integer-string limit (4300 digits)
        raise BadRecord("undecodable", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRecord("undecodable", f"JSON value is a {type(obj).__name__}, not an object")
    uid, eid, ts, typ = obj.get("user_id"), obj.get("event_id"), obj.get("ts_ms"), obj.get("type")
    if not isinstance(uid, str) or not uid:
        raise BadRecord("missing_user_id", "user_id must be a non-empty string")
    if not isinstance(eid, str) or not eid:
        raise BadRecord("missing_event_id", "event_id must be a non-empty string")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise BadRecord("bad_timestamp", f"ts_ms must be an integer of ms, got {ts!r:.40}")
    if not isinstance(typ, str) or not typ:
        raise BadRecord("missing_type", "type must be a non-empty string")
    raw_props = obj.get("props", {})
    if raw_props is None:
        raw_props = {}
    if not isinstance(raw_props, dict):
        raise BadRecord("bad_props", "props must be an object")
    props: dict[str, PropValue] = {}
    for k, v in raw_props.items():
        if v is None:  # absent, as in event files (encoder/io.py)
            continue
        if isinstance(v, str):
            props[k] = v
        elif isinstance(v, int | float):  # a bool is the number 0 / 1, as in event files
            try:
                props[k] = float(v)
            except OverflowError:  # an integer beyond the float range (1e309 and up)
                raise BadRecord("bad_props", f"prop {k!r:.40} is outside the float range") from None
        else:
            raise BadRecord("bad_props", f"prop {k!r:.40} is a {type(v).__name__}, not str/number")
    return Event(uid, eid, ts, typ, props)


def _parse_proto(value: bytes) -> events_pb2.Event:
    msg = events_pb2.Event()
    try:
        msg.ParseFromString(value)
    except (DecodeError, RuntimeError) as exc:
        raise BadRecord("undecodable", f"not a persona.v1.Event protobuf: {exc}") from None
    if not msg.user_id:
        # Random bytes often parse as an empty message; say so rather than "missing".
        why = "missing" if msg.ByteSize() else "protobuf decoded to an empty Event"
        raise BadRecord("missing_user_id", f"user_id {why}")
    if not msg.event_id:
        raise BadRecord("missing_event_id", "event_id missing")
    if not msg.type:
        raise BadRecord("missing_type", "type missing")
    return msg


def _is_json(value: bytes) -> bool:
    """JSON starts with `{` (after optional whitespace). A protobuf Event starts with field
    1's tag 0x0A, which is also `\\n`: a value starting with it is protobuf unless the rest
    really is a JSON object (a 123-byte user id has length byte 0x7B, `{`)."""
    first = value[:1]
    if first == b"{":
        return True
    if first not in (b" ", b"\t", b"\r", b"\n") or value.lstrip()[:1] != b"{":
        return False
    if first != b"\n":
        return True
    try:
        return isinstance(json.loads(value), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def _check_size(value: bytes | None, cfg: Limits) -> bytes:
    if value is None or len(value) == 0:
        raise BadRecord("undecodable", "empty record value")
    if len(value) > cfg.max_payload_bytes:
        raise BadRecord("oversized", f"{len(value)} bytes > limit {cfg.max_payload_bytes}")
    return value


def decode_event(value: bytes | None, cfg: Limits, now_ms: int) -> Event:
    """Decode and validate one record value. Raises `BadRecord` for anything not applicable.

    Args:
        value: the Kafka record value (protobuf or JSON bytes).
        cfg: limits (payload size, id lengths, prop counts, how far ahead a timestamp may be).
        now_ms: the wall clock, for the far-future check.
    """
    value = _check_size(value, cfg)
    if _is_json(value):
        ev = _from_json(value)
        cat = {k: v for k, v in ev.props.items() if isinstance(v, str)}
        num = {k: v for k, v in ev.props.items() if not isinstance(v, str)}
        _check(ev.user_id, ev.event_id, ev.type, ev.ts_ms, cat, num, cfg, now_ms, utf8_ok=False)
        return ev
    msg = _parse_proto(value)
    _check_msg(msg, cfg, now_ms, value, msg.ts_ms)
    props: dict[str, PropValue] = dict(msg.cat)
    props.update(msg.num)
    return Event(msg.user_id, msg.event_id, msg.ts_ms, msg.type, props)


def decode_for_store(value: bytes | None, cfg: Limits, now_ms: int) -> Decoded:
    """The ingest hot path: validate and return (user id, event id, ts, stored record bytes).

    A protobuf value becomes its record without a Python-side event object (the two ids are
    sliced off the wire bytes when they come first, as every protobuf encoder writes them);
    a JSON value goes through `decode_event`. Same refusals as `decode_event`, and one
    more: a stored record longer than the store takes (`_check_record`).
    """
    value = _check_size(value, cfg)
    if _is_json(value):
        ev = decode_event(value, cfg, now_ms)
        record = _check_record(pack_record(ev))
        return Decoded(ev.user_id, ev.event_id.encode("utf-8"), ev.ts_ms, record)
    msg = _EVENT()
    try:
        msg.ParseFromString(value)
    except (DecodeError, RuntimeError):
        msg = _parse_proto(value)  # raises, with the reason
    # Each field read from a parsed message costs ~0.3 us here: read each once.
    uid, eid = msg.user_id, msg.event_id
    if not uid or not eid or not msg.type:
        _parse_proto(value)  # raises, with the reason
    ts_ms = msg.ts_ms
    _check_msg(msg, cfg, now_ms, value, ts_ms)
    return Decoded(uid, eid.encode("utf-8"), ts_ms, _check_record(record_from_wire(value, msg)))


def _check_record(record: bytes) -> bytes:
    """A JSON value under `max_payload_bytes` can still make a longer record (protobuf
    spends bytes on every property's framing), and a limit raised above 64 KiB lets longer
    protobuf values through: the store takes records up to `MAX_RECORD_BYTES`."""
    if len(record) > MAX_RECORD_BYTES:
        raise BadRecord("oversized", f"stored record {len(record)} bytes > {MAX_RECORD_BYTES}")
    return record


def _nbytes(s: str) -> int:
    """UTF-8 length; ASCII-only strings answer without encoding."""
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _check_msg(msg: events_pb2.Event, cfg: Limits, now_ms: int, value: bytes, ts_ms: int) -> None:
    """Validate a parsed Event from its wire bytes `value` (`ts_ms` is `msg.ts_ms`, read once
    by the caller). A record no longer than every
    per-string limit cannot break one, so small records (the usual case) skip those loops,
    and look at the numeric props only when there are some."""
    if len(value) > min(cfg.max_id_bytes, cfg.max_value_bytes, 2 * cfg.max_props):
        cat, num = msg.cat, msg.num
        if cat and num and any(k in cat for k in num):
            raise BadRecord("bad_props", "a prop is both categorical and numeric")
        _check(msg.user_id, msg.event_id, msg.type, ts_ms, cat, num, cfg, now_ms, True)
        return
    if ts_ms <= 0 or ts_ms > now_ms + cfg.max_future_ms:
        _check_ts(ts_ms, cfg, now_ms)
    cat = msg.cat
    if "" in cat:
        raise BadRecord("bad_props", "empty prop name")
    num = msg.num
    if num:
        if "" in num:
            raise BadRecord("bad_props", "empty prop name")
        if cat and any(k in cat for k in num):
            raise BadRecord("bad_props", "a prop is both categorical and numeric")
        # A non-finite double has all exponent bits set: its top byte is 0x7F or 0xFF, so a
        # value holding neither byte has only finite numbers (the usual case, ~97 %).
        if (value.find(0x7F) >= 0 or value.find(0xFF) >= 0) and not all(
            map(math.isfinite, num.values())
        ):
            raise BadRecord("bad_props", "a numeric prop is not finite")


def _check_ts(ts_ms: int, cfg: Limits, now_ms: int) -> None:
    if ts_ms <= 0:
        raise BadRecord("bad_timestamp", f"ts_ms {ts_ms!s:.40} is not a positive epoch time in ms")
    if ts_ms > now_ms + cfg.max_future_ms:
        ahead = str((ts_ms - now_ms) // 1000)  # integers: a JSON ts_ms may have 4300 digits
        if len(ahead) > 12:
            ahead = f"~1e{len(ahead) - 1}"
        raise BadRecord("future_timestamp", f"ts_ms is {ahead} s ahead of the wall clock")


def _check(
    uid: str,
    eid: str,
    typ: str,
    ts_ms: int,
    cat: Mapping[str, str],
    num: Mapping[str, float],
    cfg: Limits,
    now_ms: int,
    utf8_ok: bool,
) -> None:
    """Validation shared by both wire forms.

    Args:
        utf8_ok: the strings came from protobuf, which already refused invalid UTF-8.
    """
    lim = cfg.max_id_bytes
    for name, s in (("user_id", uid), ("event_id", eid), ("type", typ)):
        if len(s) * 4 > lim and _nbytes(s) > lim:
            raise BadRecord("too_long", f"{name} is {_nbytes(s)} bytes > limit {lim}")
    _check_ts(ts_ms, cfg, now_ms)
    if len(cat) + len(num) > cfg.max_props:
        raise BadRecord("bad_props", f"{len(cat) + len(num)} props > limit {cfg.max_props}")
    vlim = cfg.max_value_bytes
    for k, v in cat.items():
        if not k or (len(k) * 4 > lim and _nbytes(k) > lim):
            raise BadRecord("bad_props", f"prop name {k!r:.40} empty or too long")
        if len(v) * 4 > vlim and _nbytes(v) > vlim:
            raise BadRecord("bad_props", f"prop {k!r:.40} value > {vlim} bytes")
    for k, x in num.items():
        if not k or (len(k) * 4 > lim and _nbytes(k) > lim):
            raise BadRecord("bad_props", f"prop name {k!r:.40} empty or too long")
        if not math.isfinite(x):
            raise BadRecord("bad_props", f"prop {k!r:.40} is not finite")
    if not utf8_ok:
        for s in (uid, eid, typ, *cat, *cat.values(), *num):
            if not s.isascii():
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    raise BadRecord("undecodable", "string holds a lone UTF-16 surrogate") from None
