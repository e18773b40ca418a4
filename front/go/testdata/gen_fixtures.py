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
        json.dump({"records": cases, "bad_records": bad, "halves": halves, "keys": keys}, f,
                  indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
