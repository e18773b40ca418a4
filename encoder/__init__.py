"""Persona encoder: events -> tokens -> TorchRec sequence model -> one vector per user.

Knows nothing of Kafka, Redis or gRPC. `services/` uses it through a small surface:
load a model version, turn windows (lists of `Event`) into vectors.
"""
