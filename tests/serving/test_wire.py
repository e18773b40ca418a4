"""`wire.response` (entries written with numpy, parsed once) against the reference
`fill_entries` here (one message per user): the same messages, for found, missing,
fallback and duplicate users, history, unicode and long ids, zero and huge values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import service_pb2 as pb
from services.index.prior import Prior
from services.serving import wire
from services.serving.embeddings import STATUSES, EmbeddingsResult, Status
from services.serving.servicer import PB_STATUS
from services.store.records import VectorBatch

NOW = 1_700_000_123.25


def fill_entries(resp: pb.GetEmbeddingsResponse, user_ids: Sequence[str], r: EmbeddingsResult,
                 now: float) -> None:  # fmt: skip
    """One UserEmbedding per requested id: status, the newest value's meta, the older
    values' metas, built message by message: the plain reference of `wire.response`,
    which the servicer uses."""
    s = r.stored
    count, ts, ne, wv = (s.count.tolist(), s.computed_at_ms.tolist(), s.n_events.tolist(),
                         s.window_version.tolist())  # fmt: skip
    prior = r.prior
    add = resp.embeddings.add
    for i, (u, status) in enumerate(zip(user_ids, r.statuses, strict=True)):
        e = add(user_id=u, status=PB_STATUS[status])
        c = count[i]
        if c:
            t, n, w = ts[i], ne[i], wv[i]
            m = e.meta
            m.computed_at_ms, m.n_events, m.window_version = t[0], n[0], w[0]
            m.age_seconds = max(0.0, now - t[0] / 1000.0)
            for j in range(1, c):
                h = e.history.add(computed_at_ms=t[j], n_events=n[j], window_version=w[j])
                h.age_seconds = max(0.0, now - t[j] / 1000.0)
        elif status == "fallback" and prior is not None:
            e.meta.computed_at_ms = prior.computed_at_ms
            e.meta.age_seconds = max(0.0, now - prior.computed_at_ms / 1000.0)


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
    codes = np.array([STATUSES.index(s) for s in statuses], np.uint8)
    return EmbeddingsResult("v", codes, np.zeros((n, 2), np.float32), stored, prior)


def _both(ids: list[str], r: EmbeddingsResult) -> tuple[pb.GetEmbeddingsResponse, ...]:
    ref = pb.GetEmbeddingsResponse()
    fill_entries(ref, ids, r, NOW)
    s = r.stored
    codes = np.array([PB_STATUS[x] for x in r.statuses], np.uint8)
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


def _varint(x: int) -> bytes:
    out = bytearray()
    while x > 0x7F:
        out.append(x & 0x7F | 0x80)
        x >>= 7
    return bytes([*out, x])


def _reference_bytes(ids: list[str], status: np.ndarray, count: np.ndarray,
                     computed_at_ms: np.ndarray, n_events: np.ndarray,
                     window_version: np.ndarray, now_s: float,
                     prior_ms: int | None) -> bytes:  # fmt: skip
    """The per-user loop `wire.embeddings_bytes` replaced, kept as its byte reference (the
    varint table it used, lengths < 2**14, is `_varint` here so long ids can be checked)."""
    n, h = computed_at_ms.shape
    ts, ne, wv = (np.array(a, np.int64) for a in (computed_at_ms, n_events, window_version))
    metas = np.asarray(count, np.int64)
    if prior_ms is not None:
        fallback = (metas == 0) & (np.asarray(status) == pb.STATUS_FALLBACK_PRIOR)
        ts[fallback, 0], ne[fallback, 0], wv[fallback, 0] = prior_ms, 0, 0
        metas = metas + fallback
    tail = np.empty((n, 2 + wire._META * h), np.uint8)  # noqa: SLF001  # (N, 2 + 44 H)
    tail[:] = wire._template(h)  # noqa: SLF001
    tail[:, 1] = status
    m = tail[:, 2:].reshape(n, h, wire._META)  # noqa: SLF001  # (N, H, 44), a view
    var = wire.long_varints(np.stack([ts, ne, wv], axis=2))  # (N, H, 3, 10)
    m[:, :, 3:13], m[:, :, 23:33], m[:, :, 34:44] = var[:, :, 0], var[:, :, 1], var[:, :, 2]
    ages = np.maximum(0.0, now_s - ts / 1000.0).astype("<f8")  # (N, H)
    m[:, :, 14:22] = ages.view(np.uint8).reshape(n, h, 8)
    buf = tail.tobytes()
    width = tail.shape[1]
    out: list[bytes] = []
    start = 0
    for u, k in zip(ids, (2 + wire._META * metas).tolist(), strict=True):  # noqa: SLF001
        raw = u.encode("utf-8")
        ulen = _varint(len(raw))
        out += (b"\x22", _varint(1 + len(ulen) + len(raw) + k), b"\x0a", ulen, raw,
                buf[start : start + k])  # fmt: skip
        start += width
    return b"".join(out)


_LONG_IDS = st.sampled_from([127, 128, 200, 16383, 16384]).flatmap(
    lambda k: st.sampled_from(["x" * k, "é" * (k // 2), "€" + "y" * (k - 3)])
)


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.text(min_size=1, max_size=300) | _LONG_IDS, min_size=0, max_size=40),
    h=st.integers(1, 4),
    prior=st.none() | st.integers(0, 2**62),
    seed=st.integers(0, 2**32 - 1),
)
def test_bytes_match_the_loop(ids: list[str], h: int, prior: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(ids)
    codes = [pb.STATUS_FOUND, pb.STATUS_NOT_FOUND, pb.STATUS_FALLBACK_PRIOR]
    status = rng.choice(np.array(codes, np.uint8), n)
    count = np.where(status == pb.STATUS_FOUND, rng.integers(0, h + 1, n), 0)
    values = [rng.integers(-(2**63), 2**63 - 1, (n, h), dtype=np.int64, endpoint=True)
              // rng.choice([1, 2**20, 2**40, 2**63 - 1], (n, h)) for _ in range(3)]  # fmt: skip
    args = (ids, status, count, *values, NOW, prior)
    assert wire.embeddings_bytes(*args) == _reference_bytes(*args)


def test_entry_of_2_mib_is_refused() -> None:
    big = np.zeros((1, 1), np.int64)
    one = np.ones(1, np.int64)
    ok = "x" * (2**21 - 51)  # 1 + 3 + id + 2 + 44: the longest entry, 2**21 - 1 bytes
    assert wire.embeddings_bytes([ok], one, one, big, big, big, NOW) == _reference_bytes(
        [ok], one, one, big, big, big, NOW, None
    )
    with pytest.raises(ValueError, match="entry"):
        wire.embeddings_bytes([ok + "x"], one, one, big, big, big, NOW)
    with pytest.raises(ValueError, match="ids"):
        wire.embeddings_bytes(["a", "b"], one, one, big, big, big, NOW)
