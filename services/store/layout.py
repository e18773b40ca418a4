"""Key layout v1 and the binary event record; see LAYOUT.md beside this file."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from google.protobuf.message import DecodeError
from redis.crc import key_slot

from encoder.events import Event, PropValue
from proto import events_pb2

LAYOUT_VERSION = 1
BUCKETS = 1024

_U16 = struct.Struct("<H")
_UPD = struct.Struct("<qqH")  # offset, ts_ms, len(event id)
_VERSION_BYTE = bytes((LAYOUT_VERSION,))


def bucket(user_id: str) -> int:
    return zlib.crc32(user_id.encode("utf-8")) % BUCKETS


BUCKET_SLOTS = tuple(key_slot(b"{%d}" % b) for b in range(BUCKETS))  # cluster slot per bucket


def tag(user_id: str) -> str:
    return f"{{{bucket(user_id)}}}"


def window_key(user_id: str) -> bytes:
    return f"p:{tag(user_id)}:w:".encode() + user_id.encode("utf-8")


def events_key(user_id: str) -> bytes:
    return f"p:{tag(user_id)}:e:".encode() + user_id.encode("utf-8")


def meta_key(user_id: str) -> bytes:
    return f"p:{tag(user_id)}:m:".encode() + user_id.encode("utf-8")


def dirty_key(b: int) -> bytes:
    return b"p:{%d}:dirty" % b


def user_keys(user_id: str) -> tuple[bytes, bytes, bytes]:
    """(window, events, meta) keys of one user, all in the slot of `tag(user_id)`."""
    prefix = f"p:{tag(user_id)}:".encode()
    uid = user_id.encode("utf-8")
    return prefix + b"w:" + uid, prefix + b"e:" + uid, prefix + b"m:" + uid


def record_from_proto(msg: events_pb2.Event) -> bytes:
    """A decoded wire Event -> record bytes. Clears user_id and event_id (key and field)."""
    msg.ClearField("user_id")
    msg.ClearField("event_id")
    return _VERSION_BYTE + msg.SerializeToString()


def record_from_wire(value: bytes, msg: events_pb2.Event) -> bytes:
    """`record_from_proto` for a value whose parse is `msg`, without re-serializing when the
    two ids are its first two fields (every protobuf encoder writes fields in number order):
    a message is the concatenation of its fields, so the rest of the bytes is the record.

    >>> wire = events_pb2.Event(user_id="u1", event_id="e9", ts_ms=5, type="t").SerializeToString()
    >>> msg = events_pb2.Event.FromString(wire)
    >>> record_from_wire(wire, msg) == record_from_proto(events_pb2.Event.FromString(wire))
    True
    """
    if value[0] == 0x0A and value[1] < 0x80:  # field 1 (user_id) first, length < 128
        p = 2 + value[1]
        if len(value) > p + 1 and value[p] == 0x12 and value[p + 1] < 0x80:  # then field 2
            return _VERSION_BYTE + value[p + 2 + value[p + 1] :]
    return record_from_proto(msg)


def pack_record(ev: Event) -> bytes:
    """Event -> record bytes: a version byte, then the protobuf Event without its two ids.

    >>> rec = pack_record(Event("u1", "e9", 1732345678123, "click", {"item": "i42"}))
    >>> len(rec), rec[0]
    (28, 1)
    """
    msg = events_pb2.Event(ts_ms=ev.ts_ms, type=ev.type)
    for k, v in ev.props.items():
        if isinstance(v, str):
            msg.cat[k] = v
        else:
            msg.num[k] = v
    return _VERSION_BYTE + msg.SerializeToString()


def pack_update(offset: int, event_id: bytes, ts_ms: int, record: bytes) -> bytes:
    """One event in the per-user argument of apply.lua (see its header)."""
    return _UPD.pack(offset, ts_ms, len(event_id)) + event_id + _U16.pack(len(record)) + record


def pack_updates(events: Sequence[tuple[int, Event]]) -> bytes:
    """[(offset, event), ...] -> the per-user argument of apply.lua."""
    return b"".join(
        pack_update(off, ev.event_id.encode("utf-8"), ev.ts_ms, pack_record(ev))
        for off, ev in events
    )


def unpack_record(user_id: str, event_id: str, rec: bytes) -> Event:
    """Record bytes -> Event. Raises ValueError on an unknown layout version or a bad record."""
    if not rec or rec[0] != LAYOUT_VERSION:
        got = rec[0] if rec else "empty"
        raise ValueError(f"event record layout {got}, this code reads {LAYOUT_VERSION}")
    msg = events_pb2.Event()
    try:
        msg.ParseFromString(rec[1:])
    except DecodeError as exc:
        raise ValueError(f"bad event record: {exc}") from None
    props: dict[str, PropValue] = dict(msg.cat)
    props.update(msg.num)
    return Event(user_id, event_id, msg.ts_ms, msg.type, props)
