"""Writes front/go/testdata/head.json: the fixtures the Go front's short-term head
(front/go/shortterm) is held to, from the Python code: .npy / .npz files numpy wrote (the head's
own `HeadArrays.to_bytes`, a compressed one, dtypes and orders the reader must refuse),
`ShortTermHead.delta_rows` over stored rows, `recent.state_batch` over crafted short-term
states, and `OutcomeHeads.scores` of outcomes.json texts (`from_json`, as serving loads them;
texts the front must refuse). Run from the repository root:

    .venv/bin/python front/go/testdata/gen_head.py
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from encoder.propensity import MAX_SERVED, OutcomeHeads  # noqa: E402
from encoder.shortterm import HeadArrays, ShortTermHead  # noqa: E402
from services.store import layout  # noqa: E402
from services.store.recent import state_batch  # noqa: E402

OUT = ROOT / "front" / "go" / "testdata" / "head.json"
E, H, R, MOST = 6, 5, 3, 4


def bits(a: np.ndarray) -> list[int]:
    return [int(x) for x in np.ascontiguousarray(a, np.float32).reshape(-1).view(np.uint32)]


def npy(a: np.ndarray, **kw: Any) -> str:
    buf = io.BytesIO()
    np.save(buf, a, **kw)
    return buf.getvalue().hex()


def arrays(rng: np.random.Generator) -> HeadArrays:
    f = np.float32
    return HeadArrays(
        q=rng.normal(size=(10, H)).astype(f), offsets=np.array([0, 4], np.int64),
        w_rank=rng.normal(size=R).astype(f), w1z=rng.normal(size=(H, E)).astype(f),
        w1n=rng.normal(size=H).astype(f), b1=rng.normal(size=H).astype(f),
        w2=rng.normal(size=(E, H)).astype(f), b2=rng.normal(size=E).astype(f), max_events=MOST,
    )  # fmt: skip


def npy_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Single .npy files: read (shape, values) or refused."""
    m = rng.normal(size=(3, 4)).astype(np.float32)
    good = [
        ("f4_matrix", m), ("f4_vector", m[0]), ("f4_empty", np.zeros((0, 4), np.float32)),
        ("i8_scalar", np.int64(-7)), ("i8_vector", np.array([1, -2, 2**40], np.int64)),
    ]  # fmt: skip
    out = []
    for n, a in good:
        f32 = np.asarray(a).dtype == np.float32
        out.append({"name": n, "hex": npy(a), "ok": True, "shape": list(np.shape(a)),
                    "f32_bits": bits(a) if f32 else None,
                    "i64": None if f32 else np.asarray(a).reshape(-1).tolist()})  # fmt: skip
    bad = [
        ("f8", m.astype(np.float64)),
        ("big_endian", m.astype(">f4")),
        ("i4", np.int32(3)),
        ("fortran", np.asfortranarray(m)),
        ("f2", m.astype(np.float16)),
    ]
    out += [{"name": n, "hex": npy(a), "ok": False} for n, a in bad]
    cut = bytes.fromhex(npy(m))[:-4].hex()
    out.append({"name": "cut_short", "hex": cut, "ok": False})
    out.append({"name": "not_npy", "hex": b"PK\x03\x04 not an array".hex(), "ok": False})
    return out


def delta_cases(head: ShortTermHead, rng: np.random.Generator) -> dict[str, Any]:
    """delta_rows over users with 0..6 rows (more than R: the last weight shared), all at
    once as serving computes them."""
    lengths = np.array([0, 1, 2, 3, MOST, 6, 1])
    z = rng.normal(size=(len(lengths), E)).astype(np.float32)
    u = rng.normal(size=(int(lengths.sum()), H)).astype(np.float32)
    d = head.delta_rows(z, u, lengths)
    return {"lengths": lengths.tolist(), "z_bits": bits(z), "rows_bits": bits(u),
            "delta_bits": bits(d)}  # fmt: skip


def entries(rng: np.random.Generator, spec: list[tuple[int, int, int]], h: int = H) -> bytes:
    """A state field: (ts_ms, window version, events of its APPLY) an entry, random rows."""
    out = b""
    for ts, v, cnt in spec:
        row = rng.normal(size=h).astype("<f4")
        out += layout.STATE_ENTRY.pack(ts, v, cnt, h) + row.tobytes()
    return out


def state_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """(name, blob, since, now, marker_ts): parsed together by state_batch, as serving
    parses the users of one request."""
    e = lambda spec, h=H: entries(rng, spec, h)  # noqa: E731
    crafted: list[tuple[str, bytes | None, int, int, int]] = [
        ("good", e([(110, 6, 2), (120, 6, 2), (130, 7, 1)]), 5, 7, 100),
        ("no_state", None, 5, 7, 100),
        ("empty", b"", 5, 6, 100),
        ("older_entries_dropped", e([(90, 4, 1), (110, 6, 1)]), 5, 6, 100),
        ("missing_entry_of_an_apply", e([(110, 6, 2), (130, 7, 1)]), 5, 7, 100),
        ("wrong_count", e([(110, 6, 3), (120, 6, 3)]), 5, 6, 100),
        ("missing_apply", e([(110, 6, 1)]), 5, 7, 100),
        ("equal_times", e([(110, 6, 2), (110, 6, 2)]), 5, 6, 100),
        ("decreasing_times", e([(120, 6, 1), (110, 7, 1)]), 5, 7, 100),
        ("before_the_marker", e([(100, 6, 1)]), 5, 6, 100),
        ("past_now_waits", e([(110, 6, 1), (120, 7, 1)]), 5, 6, 100),
        ("other_row_size", e([(110, 6, 1)], H + 1), 5, 6, 100),
        ("other_h_same_size", e([(110, 6, 1)], H)[:20] + (H + 1).to_bytes(4, "little")
         + e([(110, 6, 1)], H)[24:], 5, 6, 100),
        ("cut_short", e([(110, 6, 1)])[:-4], 5, 6, 100),
        ("more_than_max_events", e([(101 + i, 6, 6) for i in range(6)]), 5, 6, 100),
        ("many_applies_kept", e([(101, 6, 1), (102, 7, 3), (103, 7, 3), (104, 7, 3),
                                 (105, 8, 2), (106, 8, 2)]), 5, 8, 100),
        ("repeated_version_runs", e([(110, 6, 1), (120, 7, 1), (130, 6, 1)]), 5, 7, 100),
        ("negative_window", e([(110, 6, 1)]), 7, 6, 100),
    ]  # fmt: skip
    blobs = [c[1] for c in crafted]
    since = np.array([c[2] for c in crafted], np.int64)
    now = np.array([c[3] for c in crafted], np.int64)
    marks = np.array([c[4] for c in crafted], np.int64)
    ok, lengths, rows, newest = state_batch(blobs, since, now, marks, MOST, H)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return [{"name": c[0], "hex": None if c[1] is None else c[1].hex(), "since": c[2],
             "now": c[3], "marker_ts": c[4], "most": MOST, "row_dim": H, "ok": bool(ok[i]),
             "n": int(lengths[i]), "rows_bits": bits(rows[starts[i]:starts[i + 1]]),
             "newest_ms": int(newest[i])}
            for i, c in enumerate(crafted)]  # fmt: skip


def outcome_heads(rng: np.random.Generator, types: int) -> OutcomeHeads:
    """K = 3 horizons, "(any)", a property outcome (not served) and `types` event types;
    slopes from 0 to 40 (saturated sigmoids)."""
    names = ("(any)", "prop=x", *(f"type=t{i}" for i in range(types)))
    k, y = 3, len(names)
    a = rng.uniform(0.0, 3.0, size=(k, y))
    a[0, :4] = [40.0, 0.0, 25.0, 1.0]
    return OutcomeHeads(
        names=names, horizons_ms=(3_600_000, 86_400_000, 604_800_000),
        weight=rng.normal(size=(k * y, E)).astype(np.float32),
        bias=rng.normal(size=k * y).astype(np.float32), a=a, b=rng.normal(size=(k, y)),
        calibrated=rng.uniform(size=(k, y)) < 0.5, report={"ece": 0.1},
    )  # fmt: skip


def outcome_cases(rng: np.random.Generator) -> dict[str, Any]:
    """outcomes.json texts: read by from_json and scored over `z` (float32 bits), or ones
    the front refuses (`ok` false: from_json or scores() may fail, or numpy may read them
    otherwise than the front). "many": 273 served cells, cut to MAX_SERVED."""
    many, small = outcome_heads(rng, 90), outcome_heads(rng, 2)
    assert len(many.score_columns()) == MAX_SERVED
    z = (rng.normal(size=(5, E)) * np.array([[1], [3], [10], [0], [0.1]])).astype(np.float32)
    ints = json.loads(small.to_json())  # Python ints where floats were: numpy reads them
    ints["weight"][0][:3] = [1, 0, -2]
    ints["bias"][0] = 0
    ints["a"][0][0], ints["b"][0][0] = 2, -1
    texts = [("many", many.to_json()), ("small", small.to_json()), ("ints", json.dumps(ints))]
    read = [(n, t, OutcomeHeads.from_json(t)) for n, t in texts]
    out = [{"name": n, "json": t, "ok": True, "n": len(o.score_columns()),
            "scores_bits": bits(o.scores(z))} for n, t, o in read]  # fmt: skip

    def bad(name: str, change: Any) -> None:
        d = json.loads(small.to_json())
        change(d)
        out.append({"name": name, "json": json.dumps(d), "ok": False})

    bad("no_calibrated", lambda d: d.pop("calibrated"))
    bad("no_weight", lambda d: d.pop("weight"))
    bad("null_weight", lambda d: d["weight"][1].__setitem__(0, None))  # numpy: NaN
    bad("nan_bias", lambda d: d["bias"].__setitem__(0, float("nan")))
    bad("ragged_weight", lambda d: d["weight"][2].pop())
    bad("weight_rows", lambda d: d["weight"].pop())
    bad("flat_a", lambda d: d.__setitem__("a", d["a"][0]))
    bad("number_name", lambda d: d["names"].__setitem__(0, 7))
    bad("string_number", lambda d: d["b"][0].__setitem__(0, "1.5"))
    bad("no_horizons", lambda d: d.__setitem__("horizons_ms", []))
    bad("weight_is_null", lambda d: d.__setitem__("weight", None))
    out.append({"name": "not_an_object", "json": "[1, 2]", "ok": False})
    out.append({"name": "not_json", "json": "{", "ok": False})
    return {"e": E, "z_bits": bits(z), "cases": out}


def main() -> None:
    rng = np.random.default_rng(23)
    a = arrays(rng)
    head = ShortTermHead(a, None)  # type: ignore[arg-type]  # delta_rows needs no tokenizer
    comp = io.BytesIO()
    np.savez_compressed(comp, q=a.q, offsets=a.offsets, w_rank=a.w_rank, w1z=a.w1z, w1n=a.w1n,
                        b1=a.b1, w2=a.w2, b2=a.b2, max_events=np.int64(a.max_events))  # fmt: skip
    no_b2 = io.BytesIO()
    np.savez(no_b2, q=a.q, w_rank=a.w_rank, w1z=a.w1z, w1n=a.w1n, b1=a.b1, w2=a.w2,
             max_events=np.int64(a.max_events))  # fmt: skip
    out = {
        "head": {"npz_hex": a.to_bytes().hex(), "compressed_hex": comp.getvalue().hex(),
                 "no_b2_hex": no_b2.getvalue().hex(), "e": E, "h": H, "max_events": MOST,
                 "w_rank_bits": bits(a.w_rank), "w1z_bits": bits(a.w1z), "w2_bits": bits(a.w2),
                 "b2_bits": bits(a.b2)},
        "npy": npy_cases(rng),
        "delta": delta_cases(head, rng),
        "states": state_cases(rng),
        "outcomes": outcome_cases(rng),
    }  # fmt: skip
    with OUT.open("w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
