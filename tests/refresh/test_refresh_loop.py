"""The refresher against a real store and broker: correctness, commit-step failures, metrics."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from persona.v1.embeddings_pb2 import EmbeddingUpdate
from prometheus_client import CollectorRegistry

from services.refresh.config import RefreshConfig
from services.refresh.metrics import refresh_metrics
from services.refresh.publish import Publisher
from services.refresh.refresher import Prepared, Refresher
from services.store import layout
from services.store.vectors import WriteResult
from tests.integration.ingest_support import read_topic
from tests.refresh.conftest import Env
from tests.refresh.support import T0, add_events

pytestmark = pytest.mark.integration


def _updates(env: Env) -> dict[str, EmbeddingUpdate]:
    out = {}
    for _, _, value, _ in read_topic(env.bootstrap, env.topic):
        u = EmbeddingUpdate.FromString(value)
        out[u.user_id] = u
    return out


def test_refresh_until_idle_writes_publishes_and_clears(env: Env) -> None:
    users = [f"u{i:03d}" for i in range(150)]
    add_events(env.windows, users, 3, seed=1)
    assert [u for u, _ in env.windows.oldest_dirty(64)][:3] == ["u000", "u001", "u002"]
    reg = CollectorRegistry()
    metrics = refresh_metrics(reg)
    stats = env.refresher(metrics=metrics).run(threading.Event(), until_idle=True)
    assert stats.users == 150 and stats.vectors_written == 150 and env.windows.dirty_count() == 0
    assert env.vectors.active_version() == env.v1  # bootstrapped from the registry
    wins = env.windows.read(users)
    got = env.vectors.get_batch(users, env.v1)
    log = _updates(env)
    for w, [v] in zip(wins, got, strict=True):
        assert v.model_version == env.v1 and v.window_version == w.version and v.n_events == 3
        assert abs(time.time() * 1000 - v.computed_at_ms) < 120_000
        assert np.isfinite(v.vector).all() and np.linalg.norm(v.vector) > 0
        u = log[w.user_id]
        assert u.model_version == env.v1 and u.window_version == w.version
        assert np.array_equal(np.frombuffer(u.vector, "<f4"), v.vector)
    assert reg.get_sample_value("persona_refresh_vectors_written_total") == 150
    assert (
        reg.get_sample_value("persona_refresh_vectors_published_total", {"version": env.v1}) == 150
    )
    assert reg.get_sample_value("persona_refresh_batch_users_count") == 3  # 150 in batches of 64
    assert reg.get_sample_value("persona_refresh_dirty_users") == 0
    assert reg.get_sample_value("persona_refresh_event_to_vector_seconds_count") == 150

    add_events(env.windows, users[:10], 2, seed=2, offset0=10_000)  # they move: history grows
    env.refresher(metrics=metrics).run(threading.Event(), until_idle=True)
    hist = env.vectors.get_batch(users[:10], env.v1, history=4)
    assert all([v.window_version for v in h] == [2, 1] for h in hist)
    assert reg.get_sample_value("persona_refresh_embedding_staleness_seconds_count") == 10


class _UpdateDuringEncode(Refresher):
    """Applies a new event to the first user of each batch between encode and commit."""

    def commit(self, batch: Prepared) -> WriteResult:
        if not getattr(self, "done", False):
            self.done = True
            add_events(self.windows, [batch.writes[0].user_id], 1, seed=9, offset0=50_000)
        return super().commit(batch)


def test_user_updated_during_encoding_stays_dirty(env: Env) -> None:
    users = [f"r{i}" for i in range(5)]
    add_events(env.windows, users, 2, seed=3)
    r = env.refresher(cls=_UpdateDuringEncode)
    r.vectors.set_active(env.v1)
    cands = env.windows.oldest_dirty(64)
    r.round(cands, [env.v1], threading.Event())
    r.close()
    assert r.stats.still_dirty == 1 and env.windows.dirty_count() == 1
    (w,) = env.windows.read(["r0"])
    [[v]] = env.vectors.get_batch(["r0"], env.v1)
    assert v.window_version == w.version - 1  # written, but for the window it saw
    env.refresher().run(threading.Event(), until_idle=True)
    [[v]] = env.vectors.get_batch(["r0"], env.v1)
    assert v.window_version == w.version and env.windows.dirty_count() == 0


class _FailingPublisher(Publisher):
    def publish(self, vectors, headers=None):  # type: ignore[no-untyped-def]
        raise ConnectionError("broker down")


def test_commit_step1_publish_failure_writes_nothing(env: Env) -> None:
    users = [f"p{i}" for i in range(20)]
    add_events(env.windows, users, 2, seed=4)
    r = env.refresher(publisher=_FailingPublisher(env.refresher().publisher.producer, env.topic))
    r.vectors.set_active(env.v1)
    with pytest.raises(ConnectionError):
        r.round(env.windows.oldest_dirty(64), [env.v1], threading.Event())
    r.close()
    assert env.vectors.get_batch(users, env.v1) == [[]] * 20 and env.windows.dirty_count() == 20


class _FailingStore(Refresher):
    def commit(self, batch: Prepared) -> WriteResult:
        self.publisher.publish(batch.vectors)  # step 1 succeeds ...
        raise ConnectionError("store down")  # ... step 2 fails


def test_commit_step2_store_failure_keeps_users_dirty_log_ahead(env: Env) -> None:
    users = [f"s{i}" for i in range(20)]
    add_events(env.windows, users, 2, seed=5)
    r = env.refresher(cls=_FailingStore)
    r.vectors.set_active(env.v1)
    with pytest.raises(ConnectionError):
        r.round(env.windows.oldest_dirty(64), [env.v1], threading.Event())
    r.close()
    assert env.windows.dirty_count() == 20 and env.vectors.get_batch(users[:1], env.v1) == [[]]
    assert set(_updates(env)) == set(users)  # the log is ahead, never behind
    env.refresher().run(threading.Event(), until_idle=True)
    assert env.windows.dirty_count() == 0 and all(env.vectors.get_batch(users, env.v1))


def test_schedule_drains_on_threshold_not_before_interval(env: Env) -> None:
    cfg = RefreshConfig(
        embeddings_topic=env.topic, interval_s=3600, drain_threshold=30, check_every_s=0.05
    )
    r = env.refresher(cfg)
    stop = threading.Event()
    r.vectors.set_active(env.v1)
    add_events(env.windows, [f"t{i}" for i in range(40)], 1, seed=6)  # over the threshold
    th = threading.Thread(target=r.run, args=(stop,))
    th.start()
    try:
        deadline = time.monotonic() + 30
        # the pass ends once it finds no dirty user: events added before that join it
        while (
            env.windows.dirty_count() or not r.stats.passes_done
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert env.windows.dirty_count() == 0  # drained at once: the backlog passed 30
        add_events(env.windows, [f"q{i}" for i in range(5)], 1, seed=7)  # under it
        time.sleep(1.0)
        assert env.windows.dirty_count() == 5  # waits for the (1 h) interval
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive()
    assert layout.BUCKETS == 1024


def test_failed_pass_is_counted_by_kind_and_keeps_the_work(env: Env) -> None:
    """An active version missing from the registry: each pass fails with kind "model", is
    retried with backoff, and the users stay dirty."""
    registry = CollectorRegistry()
    r = env.refresher(metrics=refresh_metrics(registry))
    r.vectors.set_active("v-not-in-registry")
    add_events(env.windows, [f"m{i}" for i in range(3)], 1, seed=8)
    stop = threading.Event()
    th = threading.Thread(target=r.run, args=(stop,))
    th.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not registry.get_sample_value(
            "persona_refresh_errors_total", {"kind": "model"}
        ):
            time.sleep(0.05)
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive()
    assert registry.get_sample_value("persona_refresh_errors_total", {"kind": "model"}) >= 1
    assert registry.get_sample_value("persona_refresh_errors_total", {"kind": "store"}) is None
    assert env.windows.dirty_count() == 3


def test_a_property_the_model_never_saw_is_skipped_and_counted(env: Env) -> None:
    from contract.events import Event
    from tests.store_support import UserUpdate, apply_events

    evs = [
        (k, Event("n1", f"n1-{k}", T0 + k, "view", {"item": "i1", "brand_new": f"b{k}"}))
        for k in range(4)
    ]
    apply_events(env.windows, [UserUpdate("n1", 0, evs)])
    reg = CollectorRegistry()
    stats = env.refresher(metrics=refresh_metrics(reg)).run(threading.Event(), until_idle=True)
    assert stats.vectors_written == 1  # encoded all the same
    labels = {"version": env.v1, "property": "brand_new"}
    assert reg.get_sample_value("persona_refresh_unknown_properties_total", labels) == 4


def test_error_kinds() -> None:
    from confluent_kafka import KafkaError, KafkaException
    from redis.exceptions import ConnectionError as RedisConnectionError

    from services.refresh.encoders import ModelLoadError
    from services.refresh.metrics import error_kind

    assert error_kind(RedisConnectionError("down")) == "store"
    assert error_kind(KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))) == "broker"
    assert error_kind(ModelLoadError("gone")) == "model"
    assert error_kind(ZeroDivisionError()) == "other"


def test_windows_longer_than_the_model_reads_give_the_full_windows_vectors(env: Env) -> None:
    """The refresher (rounds and back-fill) reads only each window's newest `max_events` (32
    for these versions): vectors and n_events equal those of the whole window's encode."""
    from encoder.api import Encoder

    users = [f"long{i}" for i in range(6)]
    add_events(env.windows, users, 50, seed=11)
    env.refresher().run(threading.Event(), until_idle=True)
    enc = Encoder.load(env.models, env.v1)
    wins = env.windows.read(users)
    assert all(len(w.events) == 50 for w in wins) and enc.max_events == 32
    env.cut_over_to_v2()  # the back-fill reads the same way
    for ver in (env.v1, env.v2):
        enc = Encoder.load(env.models, ver)
        for w, [v] in zip(wins, env.vectors.get_batch(users, ver), strict=True):
            want = enc.encode([w.events], v.computed_at_ms)[0]
            np.testing.assert_allclose(v.vector, want, rtol=1e-5, atol=1e-6)
            assert v.n_events == 32 and v.window_version == w.version


def test_a_refresher_on_two_encode_streams_writes_the_same_vectors(env: Env) -> None:
    """`encode_streams=2`: every pass on a stream thread, the vectors those of a plain
    encoder at the same time; the stream threads stop with the refresher."""
    from encoder.api import Encoder

    users = [f"st{i:03d}" for i in range(100)]
    add_events(env.windows, users, 4, seed=12)
    cfg = RefreshConfig(embeddings_topic=env.topic, batch_size=64, encode_streams=2)
    stats = env.refresher(cfg).run(threading.Event(), until_idle=True)
    assert stats.vectors_written == 100
    assert not [t for t in threading.enumerate() if t.name.startswith("encode-stream")]
    enc = Encoder.load(env.models, env.v1)
    for w, [v] in zip(env.windows.read(users), env.vectors.get_batch(users, env.v1), strict=True):
        want = enc.encode([w.events], v.computed_at_ms)[0]
        np.testing.assert_allclose(v.vector, want, rtol=1e-5, atol=1e-6)


def test_a_vector_skipped_as_older_is_followed_in_the_log_by_the_stored_head(env: Env) -> None:
    """Two batches of one user overlapping (a share's fence ran out, two refreshers on a
    bucket): the newer window's batch commits first, then the older one's. The store skips
    the older vector, but the log had it after the newer one (the log is written first);
    the stored head is published again after it, so the log ends as the store does."""
    import time

    active = env.vectors.active_version() or env.v1
    add_events(env.windows, ["race"], 2, seed=41)
    older = env.windows.read(["race"])
    add_events(env.windows, ["race"], 1, seed=42, offset0=500)
    newer = env.windows.read(["race"])
    assert newer[0].version > older[0].version
    r = env.refresher()
    try:
        r.commit(r.prepare_windows(newer, [active], clear_dirty=True, t0=time.perf_counter()))
        res = r.commit(r.prepare_windows(older, [active], clear_dirty=True, t0=time.perf_counter()))
    finally:
        r.close()
    assert res.skipped == 1 and res.stale == [("race", active)] and r.stats.republished == 1
    [[head]] = env.vectors.get_batch(["race"], active)
    last = _updates(env)["race"]
    assert head.window_version == newer[0].version == last.window_version
