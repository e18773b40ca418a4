"""Pieces the services share: Kafka admin helpers, the KV store client, config glue."""
