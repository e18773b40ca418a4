"""`persona serve`: the gRPC service over the vector store and the lookalike index.

The bearer token is never a flag value (flags show in `ps`): it comes from
`--auth-token-file` or the PERSONA_AUTH_TOKEN environment variable.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from contract import topics
from services.config import add_connection_args, add_metrics_arg, add_models_arg, env

DEFAULT_DIM = 64


def register(sub: Any) -> None:
    # allow_abbrev=False: "--auth-token X" must not be taken for "--auth-token-file X"
    p = sub.add_parser(
        "serve", help="serve embeddings and lookalikes over gRPC", allow_abbrev=False
    )
    add_connection_args(p)
    add_models_arg(p)
    add_metrics_arg(p)
    p.add_argument("--host", default=env("SERVE_HOST", "[::]"), help="listen address")
    p.add_argument("--port", type=int, default=int(env("SERVE_PORT", "50051")), help="gRPC port")
    p.add_argument(
        "--embeddings-topic",
        default=env("EMBEDDINGS_TOPIC", topics.EMBEDDINGS),
        help="update log the lookalike index follows (env PERSONA_EMBEDDINGS_TOPIC)",
    )
    p.add_argument("--no-index", action="store_true", help="serve GetEmbeddings only")
    p.add_argument(
        "--serve-before-index",
        action="store_true",
        help="report health SERVING at start; by default a replica that follows the index"
        " stays NOT_SERVING until the active version's index has caught up (or there is no"
        " active version)",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=int(env("DIM", "0")),
        help="embedding dimension; 0 = the registry's active model's out_dim, else 64",
    )
    p.add_argument("--max-batch", type=int, default=int(env("MAX_BATCH", "1000")))
    p.add_argument("--store-timeout-ms", type=int, default=int(env("STORE_TIMEOUT_MS", "1000")))
    p.add_argument("--grace-s", type=float, default=float(env("GRACE_S", "5")))
    p.add_argument("--drain-s", type=float, default=float(env("DRAIN_S", "0")))
    p.add_argument(
        "--workers", type=int, default=int(env("SERVE_WORKERS", "16")), help="gRPC handler threads"
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=int(env("MAX_CONCURRENT_RPCS", "64")),
        help="beyond this many calls in the server, new ones get RESOURCE_EXHAUSTED (0: no limit)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM server certificate (enables TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM server private key")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA for client certificates (mTLS)")
    p.add_argument(
        "--auth-token-file",
        type=Path,
        help="file holding the bearer token clients must send (or env PERSONA_AUTH_TOKEN)",
    )
    p.set_defaults(func=cmd_serve)


def _auth_token(args: argparse.Namespace) -> str | None:
    if args.auth_token_file is not None:
        token = args.auth_token_file.read_text().strip()
        if not token:
            raise SystemExit(f"{args.auth_token_file} is empty")
        return token
    return os.environ.get("PERSONA_AUTH_TOKEN") or None


def _dim(args: argparse.Namespace) -> int:
    if args.dim > 0:
        return int(args.dim)
    from encoder import registry

    active = registry.active_version(args.models)
    out = registry.read_json(args.models, active, "model.json").get("out_dim") if active else None
    return int(out) if out else DEFAULT_DIM


def serve_config(args: argparse.Namespace) -> Any:
    from services.serving.config import Limits, ServeConfig, TLSConfig

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together")
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
    return ServeConfig(
        host=args.host,
        port=args.port,
        dim=_dim(args),
        limits=Limits(max_batch=args.max_batch),
        store_timeout_s=args.store_timeout_ms / 1000.0,
        grace_s=args.grace_s,
        drain_s=args.drain_s,
        workers=args.workers,
        max_concurrent_rpcs=args.max_concurrent_rpcs or None,
        auth_token=_auth_token(args),
        tls=tls,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from services.cli.runtime import metrics_endpoint, service_logging, stop_on_signals
    from services.index import IndexConfig
    from services.index.holder import FollowConfig, IndexHolder, VersionedFollower
    from services.index.metrics import index_metrics
    from services.serving.metrics import serving_metrics
    from services.serving.server import ServingServer
    from services.store.client import connect
    from services.store.vectors import VectorStore

    service_logging()
    log = logging.getLogger("persona.serve")
    cfg = serve_config(args)
    stop = stop_on_signals()
    registry = CollectorRegistry()
    metrics = serving_metrics(registry)
    client = connect(args.redis, socket_timeout=max(1.0, 2 * cfg.store_timeout_s))
    store = VectorStore(client)
    holder = IndexHolder()
    follower = None
    if not args.no_index:
        follow = FollowConfig(args.bootstrap, args.embeddings_topic, IndexConfig(dim=cfg.dim))
        follower = VersionedFollower(follow, holder, store.active_version, index_metrics(registry))
    server = ServingServer(cfg, store, holder, metrics)
    try:
        with metrics_endpoint(args.metrics_port, registry):
            if follower is not None:
                follower.start()
            wait = follower is not None and not args.serve_before_index
            server.start(ready=holder.wait_ready if wait else None)
            log.info("persona serve listening on port %d (dim %d)%s", server.port, cfg.dim,
                     "; health SERVING once the index caught up" if wait else "")  # fmt: skip
            stop.wait()
            log.info("shutting down")
            server.stop()  # inside the block: /metrics stays up while the server drains
    finally:
        server.stop()
        if follower is not None:
            follower.stop()
        store.close()  # the read connections and threads of the store's router
        client.close()
    return 0
