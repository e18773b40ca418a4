"""gRPC serving: `persona.v1.UserEmbeddingService` over the vector store and the lookalike index.

- `core`: plain functions (validation, version resolution, reads, search); no gRPC.
- `servicer`: the thin gRPC layer translating protos to and from `core`.
- `interceptors`: bearer-token check and per-method metrics, handed their collector.
- `server`: the grpc.Server with health checking, reflection, optional TLS / mTLS and a
  graceful stop.
"""
