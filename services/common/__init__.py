"""What more than one service builds the same way: Kafka clients, all librdkafka
(confluent-kafka): settings from `KafkaConfig` and the `PERSONA_KAFKA_*` security variables,
the producer (`kafka`), topic creation and end offsets (`kafka_admin`); and the model
versions' short-term heads read from the registry (`heads`: serving folds with them, ingest
keeps the short-term state with them). The event contract is `contract/`, the store client
`services/store/client.py`."""
