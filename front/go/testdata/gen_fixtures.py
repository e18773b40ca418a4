"""Writes front/go/testdata/records.json from the Python store code, the fixtures the Go
front's decoding is held to (front/go/README.md). Run from the repository root:

    .venv/bin/python front/go/testdata/gen_fixtures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from redis.crc import key_slot

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from services.store import deltas, layout  # noqa: E402
from services.store.records import (  # noqa: E402
    StoredVector,
    pack_vector,
    unpack_vector,
    vector_key,
)

OUT = ROOT / "front" / "go" / "testdata" / "records.json"
SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("layout1_f32", {}, "float32"),
    ("layout1_f16", {}, "float16"),
    ("layout2_scores", {"scores": np.array([0.25, 0.5, 0.0625], np.float32)}, "float32"),
    ("layout3_marker",
     {"scores": np.array([0.75], np.float32), "marker": (1_700_000_000_123, "evé-9")}, "float32"),
    ("layout3_no_scores_f16", {"marker": (42, "e1")}, "float16"),
]  # fmt: skip
# float32 -> float16 narrowing: random magnitudes, then the edges (max, overflow, subnormals,
# infinities, NaN, ties to even)
EDGES = [0.0, -0.0, 65504, 65520, 1e9, -1e9, 6e-8, 3e-8, 2.9e-8, np.inf, -np.inf, np.nan,
         1.0009765625, 1.00048828125, 1.00146484375]  # fmt: skip
IDS = ["u1", "user-42", "évé", "{x}", "a\nb"]


def bits(a: np.ndarray, kind: Any) -> list[int]:
    return [int(x) for x in a.view(kind)]


def main() -> None:
    rng = np.random.default_rng(7)
    cases = []
    for i, (name, extra, dtype) in enumerate(SPECS):
        vec = rng.normal(size=5).astype(np.float32)
        v = StoredVector(f"u{i}", "v1", vec, 1_700_000_000_000 + i, 10 + i, 3 + i, **extra)
        rec = pack_vector(v, dtype)
        back = unpack_vector("", "", rec)
        cases.append({
            "name": name, "hex": rec.hex(), "values_bits": bits(back.vector, np.uint32),
            "computed_at_ms": back.computed_at_ms, "window_version": back.window_version,
            "n_events": back.n_events,
            "scores_bits": None if back.scores is None
            else bits(back.scores.astype(np.float32), np.uint32),
            "marker_ts_ms": None if back.marker is None else back.marker[0],
        })  # fmt: skip
    one = pack_vector(StoredVector("u", "v1", np.ones(4, np.float32), 0, 0, 0))
    bad = [one[:-1].hex(), (bytes([9]) + one[1:]).hex()]  # cut short; unknown layout
    normal = rng.normal(size=200).astype(np.float32)
    mags = 10.0 ** rng.integers(-9, 6, 200)
    x = np.concatenate([normal * mags, np.array(EDGES, np.float32)]).astype(np.float32)
    with np.errstate(over="ignore"):  # 65520 and 1e9 overflow to inf, as they should
        half = x.astype(np.float16)
    halves = {"float_bits": bits(x, np.uint32), "half_bits": bits(half, np.uint16)}
    keys = [{"uid": u, "version": "v1-serve", "key_hex": vector_key(u, "v1-serve").hex(),
             "slot": key_slot(vector_key(u, "v1-serve"))} for u in IDS]  # fmt: skip
    with OUT.open("w") as f:
        json.dump({"records": cases, "bad_records": bad, "halves": halves, "keys": keys,
                   **short_term()}, f, indent=1)  # fmt: skip


def short_term() -> dict[str, Any]:
    """The short-term delta's fixtures: meta keys and fields, `d<ver>` values and what
    `delta_batch` makes of them, float32 sums (combined = nearline + delta) as numpy adds."""
    rng = np.random.default_rng(11)
    metas = [{"uid": u, "key_hex": layout.meta_key(u).hex(), "slot": key_slot(layout.meta_key(u)),
              "field_hex": layout.delta_field("v1-serve").hex()} for u in IDS]  # fmt: skip
    dim, k = 4, 6
    vals = rng.normal(size=(k, dim)).astype(np.float32)
    wv = np.array([5, 5, 5, 5, 5, 5])
    v = np.array([9, 9, 9, 9, 9, 9])
    n = np.array([3, 0, 3, 3, 3, 2**32 - 1])  # 0 events: never answers
    packed = deltas.pack_deltas(wv, v, np.arange(k) + 1_700_000_000_000, n, vals)
    packed[4] = packed[4][:-1]  # another size: never answers
    want_wv = np.array([5, 5, 6, 5, 5, 5])  # the 3rd: computed on another vector
    want_v = np.array([9, 9, 9, 10, 9, 9])  # the 4th: the window moved since
    ok, events, newest, got = deltas.delta_batch(packed, want_wv, want_v, dim)
    cases = [{"hex": b.hex(), "wv": int(a), "v": int(c), "dim": dim, "ok": bool(o),
              "events": int(e), "newest": int(t), "delta_bits": bits(d, np.uint32)}
             for b, a, c, o, e, t, d in zip(packed, want_wv, want_v, ok, events, newest, got,
                                            strict=True)]  # fmt: skip
    z = np.concatenate([rng.normal(size=300).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 300),
                        np.array([-0.0, 0.0, -0.0, np.nan, np.inf, -np.inf, 3e38, -1e-45, 1.0],
                                 np.float32)]).astype(np.float32)  # fmt: skip
    d = np.concatenate([rng.normal(size=300).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 300),
                        np.array([0.0, -0.0, -0.0, 1.0, -np.inf, 1.0, 3e38, 1e-45, 2**-24],
                                 np.float32)]).astype(np.float32)  # fmt: skip
    with np.errstate(over="ignore", invalid="ignore"):
        s = z + d
    sums = {"a_bits": bits(z, np.uint32), "b_bits": bits(d, np.uint32),
            "sum_bits": bits(s, np.uint32)}  # fmt: skip
    return {"meta_keys": metas, "deltas": cases, "sums": sums}


if __name__ == "__main__":
    main()
