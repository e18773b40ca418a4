"""Kafka clients built the same way for every service, all librdkafka (confluent-kafka):
settings from `KafkaConfig` and the `PERSONA_KAFKA_*` security variables, the producer
(`kafka`), topic creation and end offsets (`kafka_admin`). The event contract is
`contract/`, the store client `services/store/client.py`."""
