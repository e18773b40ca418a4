"""`wire.response` (entries written with numpy, parsed once) against the reference
`servicer.fill_entries` (one message per user): the same messages, for found, missing,
fallback and duplicate users, history, unicode and long ids, zero and huge values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import service_pb2 as pb
from services.serving import wire
from services.serving.embeddings import EmbeddingsResult, Status
from services.serving.ports import Prior
from services.serving.servicer import _STATUS, fill_entries
from services.store.vectors import VectorBatch

NOW = 1_700_000_123.25


def _result(statuses: list[Status], count: list[int], h: int, seed: int,
            prior_ms: int | None) -> EmbeddingsResult:  # fmt: skip
    rng = np.random.default_rng(seed)
    n = len(statuses)
    cnt = np.asarray(count, np.int64)
    present = np.arange(h)[None, :] < cnt[:, None]  # (N, H)

    def col(hi: int) -> np.ndarray:
        return np.where(present, rng.integers(0, hi, (n, h)), 0).astype(np.int64)

    stored = VectorBatch(np.zeros((n, h, 2), np.float32), cnt, col(2**62), col(2**31),
                         col(2**40))  # fmt: skip
    prior = Prior(np.zeros(2, np.float32), prior_ms) if prior_ms is not None else None
    return EmbeddingsResult("v", statuses, np.zeros((n, 2), np.float32), stored, prior)


def _both(ids: list[str], r: EmbeddingsResult) -> tuple[pb.GetEmbeddingsResponse, ...]:
    ref = pb.GetEmbeddingsResponse()
    fill_entries(ref, ids, r, NOW)
    s = r.stored
    codes = np.array([_STATUS[x] for x in r.statuses], np.uint8)
    prior_ms = r.prior.computed_at_ms if r.prior is not None else None
    fast = wire.response(ids, codes, s.count, s.computed_at_ms, s.n_events, s.window_version,
                         NOW, prior_ms)  # fmt: skip
    return ref, fast


def test_mixed_batch() -> None:
    ids = ["a", "é" * 100, "x" * 256, "a", "missing", "fb"]
    statuses: list[Status] = ["found", "found", "found", "found", "not_found", "fallback"]
    r = _result(statuses, [1, 3, 2, 1, 0, 0], 3, 0, prior_ms=1_699_999_000_000)
    ref, fast = _both(ids, r)
    assert fast == ref
    assert fast.SerializeToString() == ref.SerializeToString()
    assert len(fast.embeddings[1].history) == 2 and fast.embeddings[5].meta.computed_at_ms


def test_zero_values_and_no_prior() -> None:
    r = _result(["found", "fallback"], [1, 0], 1, 1, prior_ms=None)
    r.stored.computed_at_ms[:] = 0
    r.stored.n_events[:] = 0
    ref, fast = _both(["u", "v"], r)
    assert fast == ref and not fast.embeddings[1].HasField("meta")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.sampled_from(["found", "not_found",
                  "fallback"]), st.integers(0, 4)),
        min_size=1, max_size=30,
    ),
    h=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_matches_the_reference(rows: list[tuple[str, Status, int]], h: int, seed: int) -> None:
    ids = [u for u, _, _ in rows]
    statuses: list[Status] = [s for _, s, _ in rows]
    count = [min(c, h) if s == "found" and c else (1 if s == "found" else 0) for _, s, c in rows]
    r = _result(statuses, count, h, seed, prior_ms=seed * 1000)
    ref, fast = _both(ids, r)
    assert fast == ref


@pytest.mark.parametrize("x", [0, 1, 127, 128, 300, 2**31 - 1, 2**62, -1])
def test_long_varints(x: int) -> None:
    b = wire.long_varints(np.array([x]))
    m = pb.VectorMeta.FromString(b"\x20" + bytes(b[0]))
    assert m.window_version == x
