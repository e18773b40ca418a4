"""`Ingestor.commit`: its steps run in the order its docstring gives, and a failure at each
step leaves what the docstring says (nothing committed, nothing lost, nothing doubled)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from contract.codec import event_to_json
from contract.events import Event
from services.common.kafka import rdkafka_config
from services.common.kafka_admin import TopicSpec, ensure_topics
from services.config import KafkaConfig, WindowConfig
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics
from services.ingest.source import DeadLetters, EventSource
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.windows import WindowStore
from tests.faults.delay_proxy import DelayProxy
from tests.integration.ingest_support import ingest_until_idle, kcfg_for, produce_raw, sample

pytestmark = pytest.mark.integration
WCFG = WindowConfig(max_events=16)
BAD = b'{"user_id": "u", "event_id": '  # undecodable JSON: dead-lettered


@pytest.fixture
def topic(stack: EmbeddedStack, make_topic: Callable[..., str]) -> str:
    name = make_topic(stack.addresses.bootstrap, 1, "commit")
    ensure_topics(stack.addresses.bootstrap, [TopicSpec(name + ".dlq", 1)])
    return name


@pytest.fixture
def windows(stack: EmbeddedStack) -> Iterator[WindowStore]:
    client = connect(stack.addresses.redis)
    store = WindowStore(client, WCFG)
    yield store
    store.close()
    client.close()


def _events(topic: str, n: int) -> list[Event]:
    now = int(time.time() * 1000)
    return [Event(f"{topic}-u{i % 3}", f"e{i}", now - 1000 * (n - i), "view") for i in range(n)]


def _committed(kcfg: KafkaConfig) -> int | None:
    """The group's committed offset of partition 0 (None: nothing committed)."""
    c = Consumer({**rdkafka_config(kcfg.bootstrap), "group.id": kcfg.group_id})
    try:
        (tp,) = c.committed([TopicPartition(kcfg.topic, 0)], timeout=10)
        return int(tp.offset) if tp.offset >= 0 else None
    finally:
        c.close()


def _ingestor(kcfg: KafkaConfig, store: WindowStore) -> Ingestor:
    return Ingestor(kcfg, WCFG, store, ingest_metrics(CollectorRegistry()))


def _spy(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, log: list[str], what: str,
         fail: BaseException | None = None) -> None:  # fmt: skip
    real = getattr(cls, name)

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        log.append(what)
        if fail is not None:
            raise fail
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)


def test_steps_run_in_order_dead_letters_windows_offsets(
    stack: EmbeddedStack, topic: str, windows: WindowStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    kcfg = kcfg_for(stack.addresses.bootstrap, topic, f"g-{uuid.uuid4().hex}", max_poll_records=4)
    evs = _events(topic, 24)
    values = [BAD if i % 3 == 0 else event_to_json(e) for i, e in enumerate(evs)]
    produce_raw(kcfg, values)
    steps: list[str] = []
    _spy(monkeypatch, DeadLetters, "send_all", steps, "D")
    _spy(monkeypatch, WindowStore, "apply_packed", steps, "W")
    _spy(monkeypatch, EventSource, "commit", steps, "O")
    run = _ingestor(kcfg, windows).run(threading.Event(), until_idle=True, poll_ms=200)
    assert run.dead_lettered == 8 and run.applied == 16 and steps.count("D") >= 1
    order = "".join(steps)
    assert "DW" in order and order.replace("DW", "W") == "WO" * run.batches, order
    assert _committed(kcfg) == len(values)


def test_step_1_dead_letters_fail_nothing_written_or_committed(
    stack: EmbeddedStack, topic: str, windows: WindowStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    kcfg = kcfg_for(stack.addresses.bootstrap, topic, f"g-{uuid.uuid4().hex}")
    evs = _events(topic, 3)
    produce_raw(kcfg, [BAD, *map(event_to_json, evs)])  # the refused record comes first
    down = KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))
    _spy(monkeypatch, DeadLetters, "send_all", [], "D", fail=down)
    with pytest.raises(KafkaException):
        _ingestor(kcfg, windows).run(threading.Event(), until_idle=True, poll_ms=200)
    assert _committed(kcfg) is None
    assert all(not w.events for w in windows.read([e.user_id for e in evs]))
    monkeypatch.undo()  # the dead-letter topic is back: the restart reads the batch again
    again = ingest_until_idle(kcfg, stack.addresses.redis, WCFG)
    assert (again.stats.applied, again.stats.dead_lettered, again.stats.replayed) == (3, 1, 0)
    assert _committed(kcfg) == 4


@pytest.mark.parametrize("until_idle", [False, True])
def test_step_2_store_down_offsets_not_committed_replay_exact(
    stack: EmbeddedStack, topic: str, windows: WindowStore, until_idle: bool
) -> None:
    """Stopped while the store is down: the batch is neither written nor committed. With
    --until-idle the idle check committed the positions of the unwritten batch once (its
    lag read 0): a batch lost with exit code 0."""
    kcfg = kcfg_for(stack.addresses.bootstrap, topic, f"g-{uuid.uuid4().hex}")
    evs = _events(topic, 6)
    produce_raw(kcfg, [event_to_json(e) for e in evs])
    port = int(stack.addresses.redis.rsplit(":", 1)[1])
    with DelayProxy(port) as proxy:
        client = connect(proxy.url, socket_timeout=0.3)
        slow = WindowStore(client, WCFG)
        registry = CollectorRegistry()
        ing = Ingestor(kcfg, WCFG, slow, ingest_metrics(registry))
        proxy.delay_s = 2.0  # every store reply now comes after the client gave up
        stop = threading.Event()
        runner = threading.Thread(
            target=ing.run, args=(stop,), kwargs={"poll_ms": 200, "until_idle": until_idle}
        )
        runner.start()
        try:
            deadline = time.monotonic() + 60
            while sample(registry, "persona_ingest_store_errors_total") < 2:
                assert time.monotonic() < deadline, "the store write never failed"
                time.sleep(0.05)
        finally:
            stop.set()
            runner.join(30)
            slow.close()
            client.close()
    assert not runner.is_alive() and ing.stats.batches == 0
    assert _committed(kcfg) is None
    again = ingest_until_idle(kcfg, stack.addresses.redis, WCFG)
    # whatever the store applied before its replies were lost counts as replayed, once
    assert again.stats.applied + again.stats.replayed == len(evs)
    assert again.stats.duplicate == 0 and _committed(kcfg) == len(evs)
    by_user = {u: [e for e in evs if e.user_id == u] for u in {e.user_id for e in evs}}
    for w in windows.read(list(by_user)):
        assert w.events == by_user[w.user_id]


def test_step_3_offsets_fail_the_next_reader_replays_as_no_op(
    stack: EmbeddedStack, topic: str, windows: WindowStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # until-idle gives up after session timeout + max poll interval without progress
    kcfg = kcfg_for(
        stack.addresses.bootstrap, topic, f"g-{uuid.uuid4().hex}", max_poll_interval_ms=6000
    )
    evs = _events(topic, 6)
    produce_raw(kcfg, [event_to_json(e) for e in evs])
    moved = KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    tries: list[str] = []
    _spy(monkeypatch, EventSource, "commit", tries, "O", fail=moved)
    first = _ingestor(kcfg, windows).run(threading.Event(), until_idle=True, poll_ms=200)
    assert first.applied == len(evs) and tries and _committed(kcfg) is None
    assert first.caught_up is False  # never committed: not "caught up" (issue #18)
    monkeypatch.undo()
    again = ingest_until_idle(kcfg, stack.addresses.redis, WCFG)
    assert (again.stats.applied, again.stats.replayed) == (0, len(evs))
    assert _committed(kcfg) == len(evs)
