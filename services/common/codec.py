"""Kafka record value <-> `Event`, with validation that names what is wrong.

A value is either a serialized `persona.v1.Event` protobuf or the same record as JSON
(a value whose first non-blank byte is `{`). Anything the consumer must not apply raises
`BadRecord(reason, detail)`; the reason is a short stable code used as a metric label and
in the dead-letter header, the detail is for people.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf.message import DecodeError

from encoder.events import Event, PropValue
from proto import events_pb2
from services.config import WindowConfig

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
)


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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
        if isinstance(v, str):
            props[k] = v
        elif isinstance(v, int | float) and not isinstance(v, bool):
            props[k] = float(v)
        else:
            raise BadRecord("bad_props", f"prop {k!r:.40} is a {type(v).__name__}, not str/number")
    return Event(uid, eid, ts, typ, props)


def _from_proto(value: bytes) -> Event:
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
    props: dict[str, PropValue] = dict(msg.cat)
    for k, v in msg.num.items():
        if k in props:
            raise BadRecord("bad_props", f"prop {k!r:.40} is both categorical and numeric")
        props[k] = v
    return Event(msg.user_id, msg.event_id, msg.ts_ms, msg.type, props)


def decode_event(value: bytes | None, cfg: WindowConfig, now_ms: int) -> Event:
    """Decode and validate one record value. Raises `BadRecord` for anything not applicable.

    Args:
        value: the Kafka record value (protobuf or JSON bytes).
        cfg: limits (payload size, id lengths, prop counts, how far ahead a timestamp may be).
        now_ms: the wall clock, for the far-future check.
    """
    if value is None or len(value) == 0:
        raise BadRecord("undecodable", "empty record value")
    if len(value) > cfg.max_payload_bytes:
        raise BadRecord("oversized", f"{len(value)} bytes > limit {cfg.max_payload_bytes}")
    if value.lstrip()[:1] == b"{":
        ev = _from_json(value)
        check_event(ev, cfg, now_ms)
    else:
        ev = _from_proto(value)
        check_event(ev, cfg, now_ms, utf8_checked=True)
    return ev


def _nbytes(s: str) -> int:
    """UTF-8 length; ASCII-only and short strings answer without encoding."""
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def check_event(ev: Event, cfg: WindowConfig, now_ms: int, utf8_checked: bool = False) -> None:
    """Validation shared by both wire forms.

    Args:
        utf8_checked: the strings came from protobuf, which already refused invalid UTF-8.
    """
    lim = cfg.max_id_bytes
    for name, s in (("user_id", ev.user_id), ("event_id", ev.event_id), ("type", ev.type)):
        if len(s) * 4 > lim and _nbytes(s) > lim:
            raise BadRecord("too_long", f"{name} is {_nbytes(s)} bytes > limit {lim}")
    if ev.ts_ms <= 0:
        raise BadRecord("bad_timestamp", f"ts_ms {ev.ts_ms} is not a positive epoch time in ms")
    if ev.ts_ms > now_ms + cfg.max_future_ms:
        ahead = (ev.ts_ms - now_ms) / 1000
        raise BadRecord("future_timestamp", f"ts_ms is {ahead:.0f} s ahead of the wall clock")
    if len(ev.props) > cfg.max_props:
        raise BadRecord("bad_props", f"{len(ev.props)} props > limit {cfg.max_props}")
    vlim = cfg.max_value_bytes
    for k, v in ev.props.items():
        if not k or (len(k) * 4 > lim and _nbytes(k) > lim):
            raise BadRecord("bad_props", f"prop name {k!r:.40} empty or too long")
        if v.__class__ is str:
            if len(v) * 4 > vlim and _nbytes(v) > vlim:
                raise BadRecord("bad_props", f"prop {k!r:.40} value > {vlim} bytes")
        elif not math.isfinite(v):  # type: ignore[arg-type]
            raise BadRecord("bad_props", f"prop {k!r:.40} is not finite")
    if not utf8_checked:
        _check_utf8(ev)


def _check_utf8(ev: Event) -> None:
    """Lone surrogates (possible in JSON) cannot be stored as UTF-8: refuse them clearly."""
    parts: list[Any] = [ev.user_id, ev.event_id, ev.type, *ev.props]
    parts += [v for v in ev.props.values() if isinstance(v, str)]
    for s in parts:
        if s.isascii():
            continue
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRecord("undecodable", "string holds a lone UTF-16 surrogate") from None
