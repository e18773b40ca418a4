"""Configuration of the serving process: one frozen object, passed in once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contract import topics
from contract.record import MAX_ID_BYTES


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Server TLS. `client_ca` set means mutual TLS: clients must present a certificate
    signed by it.

    Args:
        cert: PEM certificate chain of the server.
        key: PEM private key of the server.
        client_ca: PEM CA bundle that client certificates must chain to (mTLS), or None.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may ask for; beyond these it gets INVALID_ARGUMENT.

    Args:
        max_batch: user ids per GetEmbeddings.
        max_history: older vectors per user (history_depth).
        max_k: FindLookalikes k.
        max_seeds: seed users per FindLookalikes.
        max_id_bytes: UTF-8 length of one user id.
    """

    max_batch: int = 1000
    max_history: int = 3
    max_k: int = 1000
    max_seeds: int = 1000
    max_id_bytes: int = MAX_ID_BYTES


@dataclass(frozen=True, slots=True)
class ServedLogConfig:
    """The served log: a sample of GetEmbeddings answers on a Kafka topic
    (services/serving/served_log.py).

    Args:
        rate: share of GetEmbeddings answers (per user id) written to the topic; 0: off.
        topic: the served-log topic (created at start with `kafka.partitions` partitions).
        queue: most calls' samples waiting for the producer; beyond, a call's sample is
            dropped and counted, the call never waits.
    """

    rate: float = 0.01
    topic: str = topics.SERVED
    queue: int = 10_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], not {self.rate}")
        if self.queue < 1:
            raise ValueError(f"queue must be at least 1, not {self.queue}")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """The serving process.

    Args:
        host: where gRPC listens.
        port: the gRPC port (0: the OS picks; `ServingServer.port` says).
        dim: embedding dimension served (vectors of another length are a store error).
        limits: request limits.
        store_timeout_s: longest a store call may take when the client set no deadline
            (or a longer one); store calls get min(this, remaining deadline - margin).
        deadline_margin_s: kept back from the client's deadline to answer in time.
        version_cache_s: the active version and the version states are cached this long.
            A response is still read under one version; after a cutover a replica answers
            with the old version for at most this long.
        workers: gRPC handler threads.
        store_workers: threads running the store calls that are not bounded by a deadline
            themselves (version lookups, lookalike seeds; GetEmbeddings reads on the handler
            thread, `VectorStore.read_batch`).
        max_concurrent_rpcs: beyond this, calls get RESOURCE_EXHAUSTED (None: no limit).
            Accepted calls wait for one of `workers` threads, so this bounds queueing:
            4 x workers keeps a slow store's backlog to ~4 store timeouts (256 let a
            200 ms store queue calls for 3 s; tests/faults/test_serving_faults.py).
        grace_s: `stop()` lets in-flight calls finish for this long.
        drain_s: after health goes NOT_SERVING, keep serving this long before stopping, so
            load balancers see the change.
        auth_token: bearer token clients must send (None: no check). Health checks are
            exempt (probes send no metadata).
        admin_token: the AdminService's own bearer token (ForgetUsers deletes users: the
            rankers' token must not reach it). None: the AdminService is not served.
        tls: server TLS / mTLS, or None for plaintext.
        store_probe_s: the store is probed this often (the active-version read); 0: never.
        store_probe_failures: this many failed probes in a row make readiness NOT_SERVING
            until a probe succeeds (services/serving/readiness.py).
        processes: serving processes sharing the port (SO_REUSEPORT), each with its own
            index replica; more than 1 uses more cores (services/serving/processes.py).
        served_log: the sample of answers written to Kafka (`ServedLogConfig`).
    """

    host: str = "[::]"
    port: int = 0
    dim: int = 64
    limits: Limits = field(default_factory=Limits)
    store_timeout_s: float = 1.0
    deadline_margin_s: float = 0.002
    version_cache_s: float = 1.0
    workers: int = 16
    store_workers: int = 8
    max_concurrent_rpcs: int | None = 64
    grace_s: float = 5.0
    drain_s: float = 0.0
    auth_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    tls: TLSConfig | None = None
    store_probe_s: float = 1.0
    store_probe_failures: int = 2
    processes: int = 1
    served_log: ServedLogConfig = field(default_factory=ServedLogConfig)

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, not {self.processes}")
