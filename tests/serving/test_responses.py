"""`responses.embeddings_response` (columns set from arrays) against a per-user reference
written here (one row at a time, straight from the EmbeddingsResult), through the wire
(serialize, parse) and back through the Python client's decoder: found, missing, fallback
and duplicate users, history, both encodings, zero and huge values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from persona.v1 import service_pb2 as pb
from persona_client import embeddings_from_proto

from services.index.prior import Prior
from services.serving.embeddings import STATUSES, EmbeddingsResult, Status
from services.serving.responses import PB_STATUS, embeddings_response
from services.store.records import VectorBatch

NOW = 1_700_000_123.25
D = 3


def _result(statuses: list[Status], count: list[int], h: int, seed: int,
            prior_ms: int | None) -> EmbeddingsResult:  # fmt: skip
    rng = np.random.default_rng(seed)
    n = len(statuses)
    cnt = np.asarray(count, np.int64)
    present = np.arange(h)[None, :] < cnt[:, None]  # (N, H)

    def col(hi: int) -> np.ndarray:
        return np.where(present, rng.integers(1, hi, (n, h)), 0).astype(np.int64)

    vectors = np.where(present[..., None], rng.normal(size=(n, h, D)), 0).astype(np.float32)
    stored = VectorBatch(vectors, cnt, col(2**62), col(2**31), col(2**40))
    prior = Prior(np.ones(D, np.float32), prior_ms) if prior_ms is not None else None
    codes = np.array([STATUSES.index(s) for s in statuses], np.uint8)
    rows = vectors[:, 0].copy()
    if prior is not None:
        rows[codes == STATUSES.index("fallback")] = prior.vector
    return EmbeddingsResult("v", codes, rows, stored, prior)


def _reference(r: EmbeddingsResult) -> list[dict[str, object]]:
    """Per user: status, meta (or zeros), history metas and rows, read one by one."""
    s, out = r.stored, []
    for i, name in enumerate(r.statuses):
        c = int(s.count[i])
        metas = [(int(s.computed_at_ms[i, j]), int(s.n_events[i, j]),
                  int(s.window_version[i, j])) for j in range(c)]  # fmt: skip
        if not c and name == "fallback" and r.prior is not None:
            metas = [(r.prior.computed_at_ms, 0, 0)]
        first = metas[0] if metas else (0, 0, 0)
        out.append({
            "status": PB_STATUS[name], "meta": first,
            "age": max(0.0, NOW - first[0] / 1000) if metas else 0.0,
            "history": metas[1:], "rows": s.vectors[i, 1:c],
        })  # fmt: skip
    return out


def _check(r: EmbeddingsResult, encoding: int = pb.VECTOR_ENCODING_UNSPECIFIED) -> None:
    resp = embeddings_response(r, encoding, D, NOW)
    wire = pb.GetEmbeddingsResponse.FromString(resp.SerializeToString())
    ids = tuple(f"u{i}" for i in range(len(r.status)))
    got = embeddings_from_proto(wire, ids)
    ref = _reference(r)
    assert got.status.tolist() == [u["status"] for u in ref]
    m = got.meta
    assert list(zip(m.computed_at_ms.tolist(), m.n_events.tolist(), m.window_version.tolist(),
                    strict=True)) == [u["meta"] for u in ref]  # fmt: skip
    np.testing.assert_array_equal(m.age_seconds, [u["age"] for u in ref])
    f16 = encoding == pb.VECTOR_ENCODING_FLOAT16
    want_rows = r.rows.astype(np.float16) if f16 else r.rows
    np.testing.assert_array_equal(got.vectors, want_rows)
    assert got.vectors.dtype == (np.float16 if f16 else np.float32)
    hm = got.history_meta
    metas = list(zip(hm.computed_at_ms.tolist(), hm.n_events.tolist(),
                     hm.window_version.tolist(), strict=True))  # fmt: skip
    assert metas == [m for u in ref for m in u["history"]]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(hm.age_seconds, [max(0.0, NOW - t / 1000) for t, _, _ in metas])
    for i, u in enumerate(ref):
        want = np.asarray(u["rows"])
        np.testing.assert_array_equal(got.history(i), want.astype(np.float16) if f16 else want)
    if r.stored.vectors.shape[1] == 1:  # no history asked for: the columns are left empty
        assert not wire.history_counts and not wire.history_vectors


def test_mixed_batch() -> None:
    statuses: list[Status] = ["found", "found", "found", "not_found", "fallback", "found"]
    _check(_result(statuses, [1, 3, 2, 0, 0, 1], 3, 0, prior_ms=1_699_999_000_000))


def test_no_history_no_prior_and_float16() -> None:
    r = _result(["found", "not_found", "fallback"], [1, 0, 0], 1, 1, prior_ms=None)
    _check(r)
    _check(r, pb.VECTOR_ENCODING_FLOAT16)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from(["found", "not_found", "fallback"]),
                            st.integers(1, 4)), min_size=1, max_size=30),
    h=st.integers(1, 4),
    prior=st.none() | st.integers(0, 2**62),
    seed=st.integers(0, 2**16),
    encoding=st.sampled_from([pb.VECTOR_ENCODING_FLOAT32, pb.VECTOR_ENCODING_FLOAT16]),
)  # fmt: skip
def test_matches_the_reference(rows: list[tuple[Status, int]], h: int, prior: int | None,
                               seed: int, encoding: int) -> None:  # fmt: skip
    statuses: list[Status] = [s for s, _ in rows]
    count = [min(c, h) if s == "found" else 0 for s, c in rows]
    _check(_result(statuses, count, h, seed, prior), encoding)
