"""The consumer's loop against a broker that answers some metadata calls with errors, as pure
logic (stand-in consumers): the lag read and the periodic topic-id check may fail without
stopping ingest; a topic id that must be known (offsets went backwards) still raises."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from services.config import KafkaConfig, WindowConfig
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics

DOWN = KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))


class Flaky:
    """A stand-in EventSource: partition 0's end offset cannot be read, partition 1 is
    10 records behind; topic_id fails when `down`."""

    down = True

    def assignment(self) -> list[int]:
        return [0, 1]

    def highwater(self, p: int) -> int:
        if p == 0:
            raise DOWN
        return 110

    def position(self, p: int) -> int:
        return 100

    def topic_id(self) -> str:
        if self.down:
            raise DOWN
        return "tid-2"


def test_metadata_hiccups_do_not_stop_the_consumer() -> None:
    registry = CollectorRegistry()
    ing = Ingestor(KafkaConfig(), WindowConfig(), None, ingest_metrics(registry))  # type: ignore[arg-type]
    source = Flaky()
    assert ing._update_lag(source) == {0: None, 1: 10}  # type: ignore[arg-type]  # noqa: SLF001
    assert (
        registry.get_sample_value("persona_ingest_consumer_lag_records", {"partition": "1"}) == 10
    )
    ing._consumer = source  # type: ignore[assignment]  # noqa: SLF001
    ing._tid, ing._tid_stale, ing._tid_checked = "tid-1", False, 0.0  # noqa: SLF001
    assert ing._topic_id() == "tid-1"  # the periodic check failed: the known id stays  # noqa: SLF001
    ing._tid_stale = True  # offsets went backwards: the id must be read  # noqa: SLF001
    with pytest.raises(KafkaException):
        ing._topic_id()  # noqa: SLF001
    source.down = False
    assert ing._topic_id() == "tid-2"  # noqa: SLF001


class Recreated(Flaky):
    """The topic deleted and created again: a new id; commits and seeks recorded."""

    down = False

    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []
        self.seeks = 0

    def assignment(self) -> list[int]:
        return [0]

    def commit(self, offsets: dict[int, int]) -> None:
        self.commits.append(dict(offsets))

    def seek_to_beginning(self) -> None:
        self.seeks += 1


class Msg:
    def offset(self) -> int:
        return 5


def test_a_recreated_topic_is_read_from_0_and_the_old_batch_not_committed() -> None:
    """The batch in flight when the topic id changes belongs to the old incarnation: its
    offsets (here 1000) once got committed on the new topic, so a restart before the next
    commit resumed there and skipped the new incarnation's first 1000 records."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    ing = Ingestor(KafkaConfig(), WindowConfig(), None, ingest_metrics(CollectorRegistry()))  # type: ignore[arg-type]
    source = Recreated()
    written: Future[bool] = Future()
    written.set_result(True)
    ing._consumer = source  # type: ignore[assignment]  # noqa: SLF001
    ing._known_tid, ing._tid, ing._tid_stale = "tid-1", "tid-1", True  # noqa: SLF001
    ing._inflight = (written, SimpleNamespace(offsets={0: 1000}))  # type: ignore[assignment]  # noqa: SLF001
    assert ing._prepare({0: [Msg()]}) is None  # type: ignore[list-item]  # noqa: SLF001
    assert source.seeks == 1 and source.commits == [{0: 0}]
    assert not ing.in_flight
