"""Key layout v1 of the window store; see LAYOUT.md beside this file.

Buckets and hash tags, the window keys of a user, the bucket's dirty set, and the per-user
argument of apply.lua. The event record stored under those keys is `contract.record`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.crc import key_slot

BUCKETS = 1024

_U16 = struct.Struct("<H")
_UPD = struct.Struct("<qqH")  # offset, ts_ms, len(event id)


def bucket(user_id: str) -> int:
    return zlib.crc32(user_id.encode("utf-8")) % BUCKETS


def buckets(raw_ids: Sequence[bytes]) -> np.ndarray:
    """(N,) int64 `bucket` of each UTF-8 encoded user id (C-level crc32, no per-id frame)."""
    return np.fromiter(map(zlib.crc32, raw_ids), np.int64, len(raw_ids)) % BUCKETS


BUCKET_SLOTS = tuple(key_slot(b"{%d}" % b) for b in range(BUCKETS))  # cluster slot per bucket


def tag(user_id: str) -> str:
    return f"{{{bucket(user_id)}}}"


def window_key(user_id: str) -> bytes:
    return f"p:{tag(user_id)}:w:".encode() + user_id.encode("utf-8")


def meta_key(user_id: str) -> bytes:
    return f"p:{tag(user_id)}:m:".encode() + user_id.encode("utf-8")


def dirty_key(b: int) -> bytes:
    return b"p:{%d}:dirty" % b


NO_RESCORE = -1  # a write's rescore time (`vectors.UserWrite`): out of the rescore set


def rescore_key(b: int) -> bytes:
    """Bucket B's users due to be encoded again without new events (LAYOUT.md)."""
    return b"p:{%d}:rescore" % b


def zpairs(raw: Any) -> list[tuple[bytes, float]]:
    """ZRANGE .. WITHSCORES as pairs, whether the client parsed them or not (RESP2/3)."""
    if not raw:
        return []
    if isinstance(raw[0], list | tuple):
        return [(m, float(s)) for m, s in raw]
    return [(raw[i], float(raw[i + 1])) for i in range(0, len(raw), 2)]


def user_keys(user_id: str) -> tuple[bytes, bytes, bytes]:
    """(window, events, meta) keys of one user, all in the slot of `tag(user_id)`."""
    prefix = f"p:{tag(user_id)}:".encode()
    uid = user_id.encode("utf-8")
    return prefix + b"w:" + uid, prefix + b"e:" + uid, prefix + b"m:" + uid


def pack_update(offset: int, event_id: bytes, ts_ms: int, record: bytes) -> bytes:
    """One event in the per-user argument of apply.lua (see its header); `record` is the
    stored event record (`contract.record`)."""
    return _UPD.pack(offset, ts_ms, len(event_id)) + event_id + _U16.pack(len(record)) + record


# ----- the short-term state (LAYOUT.md "Short-term state") ------------------------------

STATE_CAP = 32  # entries kept per user and version (the newest applied)
STATE_ENTRY = struct.Struct("<qqII")  # ts_ms, window version after the apply, events it
# added for the user, H; then the row (H float32): every entry of a version has one size


@dataclass(frozen=True, slots=True)
class StateSpec:
    """Which versions' short-term state an APPLY keeps: (version, row length H) each, the
    rows of `PackedUpdate.rows` in this order."""

    versions: tuple[tuple[str, int], ...]
    cap: int = STATE_CAP

    def args(self) -> list[str | int]:
        """apply.lua's ARGV[4 ...] (see its header)."""
        out: list[str | int] = [len(self.versions)]
        for version, h in self.versions:
            out += [version, 4 * h]
        return [*out, self.cap]


def state_field(version: str) -> bytes:
    """`s<ver>`: the meta hash field holding the user's short-term state under `version`."""
    return b"s" + version.encode()


DELTA_HEAD = struct.Struct("<qqqII")  # the vector's window version, the window version
# covered (meta `v`), ts_ms of the newest folded event, events folded, E; then E float32


def delta_field(version: str) -> bytes:
    """`d<ver>`: the meta hash field holding the head's output for the user's events since
    its newest vector under `version`, computed by ingest (LAYOUT.md "Short-term delta")."""
    return b"d" + version.encode()
