"""`services.common.kafka.producer`: a send that is not acknowledged raises, never drops.

No broker needed: the producer points at a port nothing listens on.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.common.kafka import producer
from services.config import KafkaConfig
from services.stack import free_ports


@pytest.fixture
def nowhere() -> KafkaConfig:
    (port,) = free_ports(1)
    return KafkaConfig(bootstrap=f"127.0.0.1:{port}")


def test_flush_raises_when_acks_are_not_in_within_its_timeout(nowhere: KafkaConfig) -> None:
    prod = producer(nowhere)
    prod.send("t", key=b"k", value=b"v", headers=[("h", b"x")])
    with pytest.raises(KafkaException) as info:
        prod.flush(0.3)
    assert info.value.args[0].code() == KafkaError._MSG_TIMED_OUT  # noqa: SLF001
    assert "1 records not acknowledged" in str(info.value)
    prod.close(0)  # logs what is left, does not raise


def test_a_failed_delivery_is_raised_by_the_next_flush(nowhere: KafkaConfig) -> None:
    prod = producer(nowhere, {"message.timeout.ms": 200})  # librdkafka gives up on the record
    prod.send("t", value=b"v")
    with pytest.raises(KafkaException) as info:
        prod.flush()
    assert info.value.args[0].code() == KafkaError._MSG_TIMED_OUT  # noqa: SLF001
    prod.flush()  # reported once: nothing is left


def test_a_record_over_the_size_cap_is_refused_at_send(nowhere: KafkaConfig) -> None:
    prod = producer(nowhere, {"message.max.bytes": 1000})
    with pytest.raises(KafkaException) as info:
        prod.send("t", value=b"x" * 2000)
    assert info.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
