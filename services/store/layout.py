"""Key layout v1 and the binary event record; see LAYOUT.md beside this file."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from encoder.events import Event, PropValue

LAYOUT_VERSION = 1
BUCKETS = 1024

_HEAD = struct.Struct("<BqH")  # version, ts_ms, len(type)
_U16 = struct.Struct("<H")
_F64 = struct.Struct("<d")
_CAT, _NUM = 1, 2
_CAT_TAG, _NUM_TAG = b"\x01", b"\x02"


def bucket(user_id: str) -> int:
    return zlib.crc32(user_id.encode("utf-8")) % BUCKETS


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


def pack_record(ev: Event) -> bytes:
    """Event -> record bytes (user id and event id are not included: they are key and field).

    >>> rec = pack_record(Event("u1", "e9", 1732345678123, "click", {"item": "i42"}))
    >>> len(rec), rec[0]
    (29, 1)
    """
    t = ev.type.encode("utf-8")
    props = ev.props
    parts = [_HEAD.pack(LAYOUT_VERSION, ev.ts_ms, len(t)), t, bytes((len(props),))]
    for name in sorted(props):
        v = props[name]
        nb = name.encode("utf-8")
        if v.__class__ is str:
            vb = v.encode("utf-8")
            parts += [_U16.pack(len(nb)), nb, _CAT_TAG, _U16.pack(len(vb)), vb]
        else:
            parts += [_U16.pack(len(nb)), nb, _NUM_TAG, _F64.pack(v)]
    return b"".join(parts)


_UPD = struct.Struct("<qqH")  # offset, ts_ms, len(event id)


def pack_updates(events: Sequence[tuple[int, Event]]) -> bytes:
    """[(offset, event), ...] -> the per-user argument of apply.lua (see its header)."""
    parts = []
    for off, ev in events:
        eid = ev.event_id.encode("utf-8")
        rec = pack_record(ev)
        parts += [_UPD.pack(off, ev.ts_ms, len(eid)), eid, _U16.pack(len(rec)), rec]
    return b"".join(parts)


def unpack_record(user_id: str, event_id: str, rec: bytes) -> Event:
    """Record bytes -> Event. Raises ValueError on an unknown layout version or a bad record."""
    version, ts_ms, tlen = _HEAD.unpack_from(rec, 0)
    if version != LAYOUT_VERSION:
        raise ValueError(f"event record layout {version}, this code reads {LAYOUT_VERSION}")
    off = _HEAD.size
    typ = rec[off : off + tlen].decode("utf-8")
    off += tlen
    n = rec[off]
    off += 1
    props: dict[str, PropValue] = {}
    for _ in range(n):
        (ln,) = _U16.unpack_from(rec, off)
        name = rec[off + 2 : off + 2 + ln].decode("utf-8")
        off += 2 + ln
        kind = rec[off]
        off += 1
        if kind == _CAT:
            (ln,) = _U16.unpack_from(rec, off)
            props[name] = rec[off + 2 : off + 2 + ln].decode("utf-8")
            off += 2 + ln
        elif kind == _NUM:
            (props[name],) = _F64.unpack_from(rec, off)
            off += _F64.size
        else:
            raise ValueError(f"unknown prop kind {kind}")
    if off != len(rec):
        raise ValueError(f"record has {len(rec) - off} trailing bytes")
    return Event(user_id, event_id, ts_ms, typ, props)
