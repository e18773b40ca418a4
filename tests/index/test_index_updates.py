"""decode_batch: update-log records to last-value-per-user operations."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from contract.updates import encode_update
from services.index.metrics import index_metrics
from services.index.updates import decode_batch

DIM = 4


def vec(x: float) -> np.ndarray:
    return np.array([x, 1.0, 0.0, 0.0], dtype=np.float32)


def test_last_value_per_key_wins() -> None:
    records = [
        (b"a", encode_update("a", vec(1), "v1")),
        (b"b", encode_update("b", vec(2), "v1")),
        (b"a", encode_update("a", vec(3), "v1")),  # overwrite
        (b"b", None),  # tombstone after an upsert
        (b"c", b""),  # empty value is a tombstone too
        (b"c", encode_update("c", vec(4), "v1")),  # upsert after a tombstone
    ]
    batch = decode_batch(records, DIM, None)
    assert set(batch.upserts) == {"a", "c"} and batch.deletes == {"b"}
    assert np.array_equal(batch.upserts["a"], vec(3))
    assert np.array_equal(batch.upserts["c"], vec(4))
    assert not batch.skipped


def test_other_versions_ignored_and_bad_records_counted() -> None:
    nan = np.array([np.nan, 1, 0, 0], dtype=np.float32)
    records = [
        (b"a", encode_update("a", vec(1), "v1")),
        (b"a", encode_update("a", vec(2), "v2")),  # other version: a keeps vec(1)
        (None, encode_update("x", vec(1), "v1")),  # no key
        (b"\xff", encode_update("x", vec(1), "v1")),  # not UTF-8
        (b"d", b"\x0a\xff\xff"),  # not a proto
        (b"e", encode_update("e", np.ones(3, np.float32), "v1")),  # wrong dim
        (b"f", encode_update("f", nan, "v1")),  # NaN
        (b"g", encode_update("other", vec(1), "v1")),  # key and user_id disagree
        (b"h", encode_update("h", np.zeros(DIM, np.float32), "v1")),  # zero vector
    ]
    batch = decode_batch(records, DIM, "v1")
    assert list(batch.upserts) == ["a"] and np.array_equal(batch.upserts["a"], vec(1))
    assert batch.skipped == {"ignored": 1, "invalid": 7}
    assert set(decode_batch(records[:2], DIM, None).upserts) == {"a"}


def test_a_refused_record_leaves_the_earlier_value_of_the_run_standing() -> None:
    nan = np.array([1, np.inf, 0, 0], dtype=np.float32)
    records = [
        (b"a", encode_update("a", vec(1), "v1")),
        (b"a", encode_update("a", nan, "v1")),  # refused: a keeps vec(1)
        (b"b", None),
        (b"b", encode_update("b", np.zeros(DIM, np.float32), "v1")),  # refused: b stays deleted
        (b"c", encode_update("c", nan, "v1")),
        (b"c", encode_update("c", vec(5), "v1")),  # a good value after a refused one
    ]
    batch = decode_batch(records, DIM, "v1")
    assert set(batch.upserts) == {"a", "c"} and batch.deletes == {"b"}
    assert np.array_equal(batch.upserts["a"], vec(1))
    assert np.array_equal(batch.upserts["c"], vec(5))
    assert batch.skipped == {"invalid": 3}
    empty = decode_batch([], DIM, "v1")
    assert not empty.upserts and not empty.deletes and not empty.skipped


def test_metrics_names_on_a_fresh_registry() -> None:
    registry = CollectorRegistry()
    m = index_metrics(registry)
    m.size.set(3)
    m.updates.labels(op="upsert").inc(2)
    m.rebuild_seconds.observe(0.2)
    m.lag_records.set(5)
    get = registry.get_sample_value
    assert get("persona_index_size") == 3
    assert get("persona_index_updates_total", {"op": "upsert"}) == 2
    assert get("persona_index_rebuild_seconds_count") == 1
    assert get("persona_index_update_log_lag_records") == 5
    index_metrics(CollectorRegistry())  # a second registry is independent


def test_versioned_keys_survive_compaction_with_two_live_versions() -> None:
    """The refresher writes `<version>/<user>` keys; compaction keeps the last value per key,
    so a follower of either version still finds every user after a cutover."""
    log = []
    for u in ("a", "b", "c"):  # both versions written for every user, interleaved
        log.append((f"v1/{u}".encode(), encode_update(u, vec(1), "v1")))
        log.append((f"v2/{u}".encode(), encode_update(u, vec(2), "v2")))
    log.append((b"v2/c", None))  # v2 deletes c; v1 keeps it
    compacted = list({k: (k, v) for k, v in log}.values())  # last value per key
    v1 = decode_batch(compacted, DIM, "v1")
    v2 = decode_batch(compacted, DIM, "v2")
    assert sorted(v1.upserts) == ["a", "b", "c"] and not v1.deletes
    assert sorted(v2.upserts) == ["a", "b"] and v2.deletes == {"c"}
    # With plain user-id keys the same compaction would lose v1 for every user.
    plain = list({k.split(b"/")[1]: (k.split(b"/")[1], v) for k, v in log if v}.values())
    assert decode_batch(plain, DIM, "v1").upserts == {}


def test_a_record_without_a_user_after_its_version_is_invalid_not_a_stopped_reader() -> None:
    """Key `v1/` with a well-formed update: the user id is empty. It once reached the index,
    whose refusal (ValueError) ended the follower's reader thread on every replica and
    restart (the compacted log keeps the record). Counted invalid; the run's others apply;
    and an id the index refuses however it got there is counted, not raised."""
    from services.index.ann import LookalikeIndex
    from services.index.config import IndexConfig
    from services.index.follower import upsert_each
    from services.index.updates import Batch

    records = [
        (b"v1/", encode_update("", vec(1), "v1")),
        (b"v1/a", encode_update("a", vec(2), "v1")),
    ]
    batch = decode_batch(records, DIM, "v1")
    assert list(batch.upserts) == ["a"] and batch.skipped == {"invalid": 1}
    index = LookalikeIndex(IndexConfig(dim=DIM, exact_below=1000, gpu="off"))
    let_through = Batch(upserts={"b": vec(3), "bad\x00id": vec(4), "c": vec(5)})
    upsert_each(index, let_through)
    assert index.size == 2 and set(let_through.upserts) == {"b", "c"}
    assert let_through.skipped == {"invalid": 1}


def test_a_failing_rebuild_backs_off_and_is_counted() -> None:
    """A rebuild that keeps failing (out of memory, a faiss error) is tried again after 2,
    4, 8 ... maintenance checks, each failure counted; it was tried at every check."""
    import threading
    import time

    from services.index.follower import FollowerConfig, IndexFollower

    class Failing:
        dim, size, changes_since_build, attempts = DIM, 0, 1, 0

        def needs_rebuild(self) -> bool:
            return True

        def rebuild(self) -> None:
            self.attempts += 1
            raise MemoryError("no room for the new lists")

    index = Failing()
    registry = CollectorRegistry()
    cfg = FollowerConfig(maintenance_check_s=0.02)
    follower = IndexFollower("unused:9092", "u", index, "v1", cfg, index_metrics(registry))  # type: ignore[arg-type]
    loop = threading.Thread(target=follower._maintain_loop)  # noqa: SLF001 (the loop alone)
    loop.start()
    time.sleep(1.0)  # 50 checks: tries at ~0.04, 0.12, 0.28, 0.6 s (later on a slow machine)
    follower._stop.set()  # noqa: SLF001
    loop.join(10)
    assert 1 <= index.attempts <= 5
    assert registry.get_sample_value("persona_index_rebuild_failures_total") == index.attempts
