"""`persona serve`: the gRPC service over the vector store and the lookalike index.

The bearer token is never a flag value (flags show in `ps`): it comes from
`--auth-token-file` or the PERSONA_AUTH_TOKEN environment variable.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.config import add_connection_args, add_metrics_arg, add_models_arg, setting_flag

if TYPE_CHECKING:
    from collections.abc import Iterator

    from services.cli.settings import Settings
    from services.common.kafka import AckedProducer
    from services.serving.config import ServeConfig
    from services.serving.metrics import ServingMetrics
    from services.serving.processes import Member
    from services.serving.served_log import ServedLog

DEFAULT_DIM = 64


def register(sub: Any) -> None:
    # allow_abbrev=False: "--auth-token X" must not be taken for "--auth-token-file X"
    p = sub.add_parser(
        "serve", help="serve embeddings and lookalikes over gRPC", allow_abbrev=False
    )
    add_connection_args(p)
    add_models_arg(p)
    add_metrics_arg(p)
    setting_flag(p, "serve.host", "--host", metavar="ADDR", help="listen address")
    setting_flag(p, "serve.port", "--port", metavar="PORT", help="gRPC port")
    setting_flag(
        p,
        "refresh.embeddings_topic",
        "--embeddings-topic",
        metavar="TOPIC",
        help="update log the lookalike index follows",
    )
    p.add_argument("--no-index", action="store_true", help="serve GetEmbeddings only")
    p.add_argument(
        "--serve-before-index",
        action="store_true",
        help="report health SERVING at start; by default a replica that follows the index"
        " stays NOT_SERVING until the active version's index has caught up (or there is no"
        " active version)",
    )
    setting_flag(
        p,
        "serve.dim",
        "--dim",
        metavar="N",
        help="embedding dimension; 0 = the registry's active model's out_dim, else 64",
    )
    setting_flag(p, "serve.limits.max_batch", "--max-batch", metavar="N")
    setting_flag(p, "serve.limits.max_k", "--max-k", metavar="N")
    setting_flag(p, "serve.limits.max_seeds", "--max-seeds", metavar="N")
    setting_flag(p, "serve.store_timeout_s", "--store-timeout-ms", metavar="MS",
                 help="longest a store call may take when the client set no (or a longer)"
                 " deadline")  # fmt: skip
    setting_flag(p, "serve.grace_s", "--grace-s", metavar="S")
    setting_flag(p, "serve.drain_s", "--drain-s", metavar="S")
    setting_flag(p, "serve.workers", "--workers", metavar="N")
    setting_flag(p, "serve.processes", "--processes", metavar="N")
    setting_flag(p, "serve.served_log.rate", "--served-log-rate", metavar="R",
                 help="share of GetEmbeddings answers sampled to the served-log topic"
                 " (0: off)")  # fmt: skip
    setting_flag(
        p,
        "serve.max_concurrent_rpcs",
        "--max-concurrent-rpcs",
        metavar="N",
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
    p.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the AdminService's own bearer token (or env PERSONA_ADMIN_TOKEN);"
        " without one the AdminService (ForgetUsers) is not served",
    )
    p.set_defaults(func=cmd_serve)


def _token(file: Path | None, value: str | None, env: str) -> str | None:
    """The file's token, else the variable's; None when neither is given. An empty one
    (blank file, PERSONA_AUTH_TOKEN="") is refused: it reads as "auth on" to whoever set
    it, and would serve every caller (issue #18)."""
    if file is not None:
        token = file.read_text().strip()
        if not token:
            raise SystemExit(f"{file} is empty")
        return str(token)
    if value is not None and not value.strip():
        raise SystemExit(
            f"{env} is set but empty: set the token, or unset the variable to serve without one"
        )
    return value


def _auth_token(args: argparse.Namespace, s: Settings) -> str | None:
    return _token(args.auth_token_file, s.serve.auth_token, "PERSONA_AUTH_TOKEN")


def _admin_token(args: argparse.Namespace, s: Settings) -> str | None:
    return _token(args.admin_token_file, s.serve.admin_token, "PERSONA_ADMIN_TOKEN")


def _dim(s: Settings) -> int:
    if s.serve.dim > 0:
        return s.serve.dim
    from encoder import registry

    models = s.process.models
    try:
        active = registry.active_version(models)
        if active is not None:
            registry.open_version(models, active)  # a tampered model.json is not read
    except registry.RegistryError as exc:
        raise SystemExit(f"--dim 0 reads the active model's dimension: {exc}") from None
    out = registry.read_json(models, active, "model.json").get("out_dim") if active else None
    return int(out) if out else DEFAULT_DIM


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The serving section of the settings, with what only flags give: TLS files, the token
    file, and the dimension read from the registry when it is 0."""
    from dataclasses import replace

    from services.serving.config import TLSConfig

    s: Settings = args.settings
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together")
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
    auth, admin = _auth_token(args, s), _admin_token(args, s)
    return replace(s.serve, dim=_dim(s), auth_token=auth, admin_token=admin, tls=tls)


def _serve_processes(args: argparse.Namespace) -> int:
    """`--processes N` > 1: the parent of N members that each run `cmd_serve(args, member)`
    on the one port (services/serving/processes.py); its /metrics shows theirs."""
    from contextlib import contextmanager

    from prometheus_client import CollectorRegistry

    from services.cli.runtime import metrics_endpoint, service_logging, stop_on_signals
    from services.serving.processes import MemberMetrics, run_members

    s: Settings = args.settings
    service_logging(s.telemetry, "serve")
    cfg = serve_config(args)  # a bad flag or token fails here, not N times
    stop = stop_on_signals()

    @contextmanager
    def parent_endpoint(port: int, members: MemberMetrics | None) -> Iterator[None]:
        registry = CollectorRegistry()
        if members is not None:
            registry.register(members)
        with metrics_endpoint(s.process, registry):
            logging.getLogger("persona.serve").info(
                "persona serve: %d processes on port %d", cfg.processes, port
            )
            yield

    timeout = cfg.drain_s + cfg.grace_s + 10.0
    return run_members(cmd_serve, args, cfg.host, cfg.port, cfg.processes,
                       bool(s.process.metrics_port), stop, timeout, parent_endpoint)  # fmt: skip


def _as_member(s: Settings, cfg: ServeConfig, member: Member) -> tuple[Settings, ServeConfig]:
    """One member's settings: the shared port, its own loopback /metrics port."""
    from dataclasses import replace

    process = replace(s.process, metrics_port=member.metrics_port, metrics_host="127.0.0.1")
    return s.model_copy(update={"process": process}), replace(cfg, port=member.port)


def _served_log(s: Settings, cfg: ServeConfig, metrics: ServingMetrics) -> ServedLog | None:
    """The served log (None when its rate is 0); its thread creates the topic, if missing,
    before the producer sends (services/serving/served_log.py)."""
    if cfg.served_log.rate <= 0:
        return None
    from services.common.kafka import producer
    from services.common.kafka_admin import TopicSpec, ensure_topics
    from services.serving.served_log import ServedLog

    def open_producer() -> AckedProducer:
        ensure_topics(s.kafka.bootstrap, [TopicSpec(cfg.served_log.topic, s.kafka.partitions)])
        return producer(s.kafka, {"linger.ms": 50})

    return ServedLog(cfg.served_log, open_producer, metrics)


def cmd_serve(args: argparse.Namespace, member: Member | None = None) -> int:
    """`persona serve`; `member`: run as one of `--processes N` (processes.py)."""
    from dataclasses import replace

    from prometheus_client import CollectorRegistry
    from redis.exceptions import RedisError

    from services.cli.runtime import metrics_endpoint, service_logging, stop_on_signals
    from services.common.kafka import producer
    from services.index.holder import FollowConfig, IndexHolder, VersionedFollower
    from services.index.metrics import index_metrics
    from services.index.probe import RecallProbe
    from services.refresh.publish import Publisher
    from services.serving.admin import AdminServicer
    from services.serving.metrics import serving_metrics
    from services.serving.processes import ReadyBarrier
    from services.serving.server import ServingServer
    from services.serving.shortterm import RegistryHeads
    from services.store.client import connect
    from services.store.forget import StoreForgetter
    from services.store.vectors import VectorStore

    s: Settings = args.settings
    if member is None and s.serve.processes > 1:
        return _serve_processes(args)
    if member is not None:
        member.enter()
    service_logging(s.telemetry, "serve")
    log = logging.getLogger("persona.serve")
    cfg = serve_config(args)
    if member is not None:
        s, cfg = _as_member(s, cfg, member)
    stop = stop_on_signals()
    registry = CollectorRegistry()
    metrics = serving_metrics(registry)
    client = connect(s.store.redis, socket_timeout=max(1.0, 2 * cfg.store_timeout_s))
    store = VectorStore(client)
    holder = IndexHolder()
    follower = probe = None
    if not args.no_index:
        index = replace(s.index, dim=cfg.dim)
        follow = FollowConfig(s.kafka.bootstrap, s.refresh.embeddings_topic, index)
        imetrics = index_metrics(registry)
        follower = VersionedFollower(follow, holder, store.active_version, imetrics)
        if index.probe_every_s > 0:
            probe = RecallProbe(holder, imetrics.live_recall, index.recall_ks,
                                index.probe_every_s, index.probe_queries)  # fmt: skip
    forgetter = admin = None
    if cfg.admin_token is not None:  # the AdminService only behind its own token
        forgetter = StoreForgetter(client)
        rc = s.refresh
        admin = AdminServicer(
            forgetter,
            lambda: Publisher(producer(s.kafka), rc.embeddings_topic, rc.max_publish_wait_s),
            cfg.limits.max_batch,
            max_id_bytes=cfg.limits.max_id_bytes,
        )
    served_log = _served_log(s, cfg, metrics)
    heads = RegistryHeads(s.process.models)  # each version's short-term head, if it has one
    try:  # the active version's head loaded now, not by the first request
        if (active := store.active_version()) is not None:
            heads.head(active)
    except RedisError as exc:  # the store's absence is readiness's business (StoreWatch)
        log.warning("active version not read at start (%s); heads load on first use", exc)
    server = ServingServer(cfg, store, holder, metrics, admin=admin, served_log=served_log,
                           heads=heads)  # fmt: skip
    try:
        with metrics_endpoint(s.process, registry):
            if follower is not None:
                follower.start()
            if probe is not None:
                probe.start()
            wait = follower is not None and not args.serve_before_index
            ready = holder.wait_ready if wait else None
            server.start(ready=ready if member is None else ReadyBarrier(member, ready))
            log.info("persona serve listening on port %d (dim %d)%s", server.port, cfg.dim,
                     "; health SERVING once the index caught up" if wait else "")  # fmt: skip
            stop.wait()
            log.info("shutting down")
            server.stop()  # inside the block: /metrics stays up while the server drains
    finally:
        server.stop()
        if probe is not None:
            probe.stop()
        if follower is not None:
            follower.stop()
        store.close()  # the read connections and threads of the store's router
        if forgetter is not None:
            forgetter.close()
        client.close()
    return 0
