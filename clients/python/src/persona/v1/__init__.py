"""The persona.v1 contract, generated from proto/persona/v1/*.proto by `make protos`: do not
edit. `service_pb2` / `service_pb2_grpc` the gRPC API, `events_pb2` the Kafka event record,
`embeddings_pb2` the update-log record."""
