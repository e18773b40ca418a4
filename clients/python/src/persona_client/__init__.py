"""Python client of Persona's persona.v1 gRPC API (docs/api.md): user embeddings and
lookalikes as numpy arrays, with deadlines, retries on UNAVAILABLE (through the gRPC service
config), client-side load balancing and bearer-token auth. No torch, no faiss: this package
needs grpcio, protobuf and numpy only.

    from persona_client import ClientConfig, PersonaClient

    with PersonaClient(ClientConfig("dns:///persona-serve:50051", timeout_s=0.05,
                                    load_balancing="round_robin")) as client:
        emb = client.get_embeddings(["u1", "u2"])   # emb.vectors (2, D), emb.status, emb.meta
        # get_embeddings(ids, include_scores=True).scores: (2, S) outcome probabilities

The generated messages and stubs are `persona.v1.service_pb2` / `service_pb2_grpc`.
"""

from persona_client.client import PersonaClient, open_channel
from persona_client.config import TLS, ClientConfig, service_config
from persona_client.results import (
    FALLBACK_PRIOR,
    FOUND,
    NOT_FOUND,
    Embeddings,
    Lookalikes,
    VectorMeta,
    embeddings_from_proto,
    score_columns,
)

__all__ = [
    "FALLBACK_PRIOR",
    "FOUND",
    "NOT_FOUND",
    "TLS",
    "ClientConfig",
    "Embeddings",
    "Lookalikes",
    "PersonaClient",
    "VectorMeta",
    "embeddings_from_proto",
    "open_channel",
    "score_columns",
    "service_config",
]
