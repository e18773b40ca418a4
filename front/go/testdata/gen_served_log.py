"""Writes front/go/testdata/served_log.json, the fixtures the Go front's served log is held
to (front/go/README.md, "Served log"): records as `services/serving/served_log.py`'s
`Sample.records()` writes them (key, and the value `json.dumps(..., ensure_ascii=False)`
gives, byte for byte), and the partitions librdkafka's default partitioner gives keys (its
in-process mock cluster, `test.mock.num.brokers`, whose topics have 4 partitions; no
broker needed). Run from the repository root:

    .venv/bin/python front/go/testdata/gen_served_log.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Message, Producer

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from services.serving.embeddings import STATUSES  # noqa: E402
from services.serving.served_log import Sample  # noqa: E402

OUT = ROOT / "front" / "go" / "testdata" / "served_log.json"
# ids and request ids that exercise json.dumps' escaping: quotes, backslash, every control
# character (the named ones and \u00XX), DEL, non-ASCII (kept as is), U+2028, astral, "/"
CONTROLS = "".join(chr(c) for c in range(0x20)) + "\x7f"
IDS = ["u1", "user-42", "évé", 'q"uo\\te', "a\nb\tc\r\b\f", CONTROLS, "\u2028\u2029", "😀/x",
       "{x}", "ü" * 64]  # fmt: skip
REQUEST_IDS: list[str | None] = [None, "req-1", "9f1c2e", 'r"q\\', "é" * 64]
PARTITION_KEYS = [*IDS, *(f"u{i}" for i in range(40)), "a", "zz", "longer-user-id-0001"]
MOCK_PARTITIONS = 4  # librdkafka's mock cluster creates topics with 4 partitions


def records() -> list[dict[str, Any]]:
    out = []
    for i, uid in enumerate(IDS):
        for j in range(len(STATUSES)):
            rid = REQUEST_IDS[(i + j) % len(REQUEST_IDS)]
            status, at = np.array([j], np.uint8), np.array([1_764_650_000_000 - i], np.int64)
            s = Sample(1_764_650_001_234 + i, rid, f"v{i}-serve", [uid], status, at)
            ((key, value),) = s.records()
            out.append({
                "served_at_ms": s.served_at_ms, "request_id": rid, "version": s.version,
                "user_id": uid, "status": STATUSES[j], "computed_at_ms": int(s.computed_at_ms[0]),
                "key_hex": key.hex(), "value_hex": value.hex(),
            })  # fmt: skip
    return out


def partitions() -> list[dict[str, Any]]:
    """librdkafka's partition of each key (its default partitioner), on the mock cluster."""
    p = Producer({"test.mock.num.brokers": 1, "linger.ms": 0, "log_level": 3})
    got: dict[bytes, int] = {}

    def done(err: Any, msg: Message) -> None:
        assert err is None, err
        got[msg.key() or b""] = msg.partition() or 0

    for k in PARTITION_KEYS:
        p.produce("keys", b"x", k.encode(), on_delivery=done)
    assert p.flush(30) == 0
    n = len(p.list_topics("keys", timeout=10).topics["keys"].partitions)
    assert n == MOCK_PARTITIONS, n
    return [{"key_hex": k.encode().hex(), "partitions": n, "partition": got[k.encode()]}
            for k in PARTITION_KEYS]  # fmt: skip


def main() -> None:
    t0 = time.monotonic()
    with OUT.open("w") as f:
        json.dump({"records": records(), "partitions": partitions()}, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT.relative_to(ROOT)} in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
