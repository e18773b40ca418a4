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
