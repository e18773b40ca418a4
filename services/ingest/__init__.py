"""Ingest: Kafka events -> validated -> per-user windows in the KV store (effectively once)."""
