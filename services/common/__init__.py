"""Kafka clients built the same way for every service: kafka-python and librdkafka
settings from `KafkaConfig` and the `PERSONA_KAFKA_*` security variables (`kafka`), topic
creation and end offsets (`kafka_admin`). The event contract is `contract/`, the store
client `services/store/client.py`."""
