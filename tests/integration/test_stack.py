"""The embedded stack against its real children: Tansu and valkey-server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from services.common.kafka import producer
from services.common.kafka_admin import end_offsets
from services.config import KafkaConfig
from services.stack import (
    EmbeddedStack,
    StackAddresses,
    StackConfig,
    StackError,
    cluster_state,
    probe_keys,
)
from tests.integration.ingest_support import read_topic

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


def gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def child_pids(ppid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid:
            pids.append(int(stat.parent.name))
    return pids


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def kafka_round_trip(bootstrap: str, topic: str, n: int = 20) -> None:
    prod = producer(KafkaConfig(bootstrap=bootstrap))
    try:
        for i in range(n):
            prod.send(topic, key=f"u{i}".encode(), value=b"v%d" % i, headers=[("h", b"x")])
        prod.flush()
    finally:
        prod.close()
    assert sum(end_offsets(bootstrap, topic).values()) == n
    records = read_topic(bootstrap, topic)
    assert all(headers == [("h", b"x")] for _, _, _, headers in records)
    assert sorted(value for _, _, value, _ in records) == sorted(b"v%d" % i for i in range(n))


def test_single_stack_answers(stack: EmbeddedStack, fresh_topic: str) -> None:
    a = stack.addresses
    assert a.redis_nodes == (a.redis,)
    r = redis.Redis.from_url(a.redis)
    assert r.ping()
    assert set(end_offsets(a.bootstrap, a.topic)) == {0, 1, 2, 3}
    assert StackAddresses.from_json(a.to_json()) == a
    kafka_round_trip(a.bootstrap, fresh_topic)
    r.close()


def test_cluster_writes_land_on_every_shard(cluster_stack: EmbeddedStack) -> None:
    nodes = [redis.Redis.from_url(u) for u in cluster_stack.addresses.redis_nodes]
    assert len(nodes) == 3
    assert all(cluster_state(n) == "ok" for n in nodes)
    rc = RedisCluster.from_url(cluster_stack.addresses.redis)
    keys = [f"test-stack:{i}" for i in range(300)]
    for k in keys:
        rc.set(k, k)
    assert rc.mget_nonatomic(keys) == [k.encode() for k in keys]
    assert all(n.dbsize() > 50 for n in nodes)  # ~100 each with slots split evenly
    rc.delete(*keys)
    rc.close()
    for n in nodes:
        n.close()


def test_stop_leaves_no_process_and_no_tempdir() -> None:
    stack = EmbeddedStack(StackConfig())
    with stack:
        pids, workdir = stack.pids(), stack.workdir
        assert len(pids) == 2 and workdir.is_dir()
        assert (workdir / "tansu.log").exists()
    assert all(gone(p) for p in pids)
    assert not workdir.exists()
    stack.stop()  # idempotent


def test_start_failure_names_the_child_and_shows_its_log() -> None:
    stack = EmbeddedStack(StackConfig(valkey_args=("--no-such-directive", "1")))
    with pytest.raises(StackError, match=r"(?s)valkey-0 died before PING.*no-such-directive"):
        stack.start()
    assert stack.pids() == []


def test_restart_broker_and_valkey_in_cluster() -> None:
    with EmbeddedStack(StackConfig(cluster=True, partitions=2)) as stack:
        a = stack.addresses
        rc = RedisCluster.from_url(a.redis)
        keys = probe_keys(3)
        for k in keys:
            rc.set(k, b"before")
        old_pid = stack.valkeys[1].pid
        stack.kill_valkey(1)
        assert old_pid is not None and gone(old_pid)
        stack.restart_valkey(1)
        assert stack.valkeys[1].pid != old_pid
        assert stack.addresses == a  # same ports
        for url in a.redis_nodes:
            assert cluster_state(redis.Redis.from_url(url)) == "ok"
        rc.close()
        rc = RedisCluster.from_url(a.redis)
        assert [rc.get(k) for k in keys] == [b"before", None, b"before"]  # node 1 came back empty
        for k in keys:
            rc.set(k, b"after")
        assert [rc.get(k) for k in keys] == [b"after"] * 3
        rc.close()

        stack.restart_broker()
        assert end_offsets(a.bootstrap, a.topic) == {0: 0, 1: 0}  # memory storage: fresh topics
        kafka_round_trip(a.bootstrap, a.topic, n=5)


def test_persona_up_cluster_runs_until_sigterm() -> None:
    proc = subprocess.Popen(
        [*CLI, "up", "--cluster", "--partitions", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        a = StackAddresses.from_json(proc.stdout.readline())
        assert a.topic == "persona.events" and len(a.redis_nodes) == 3
        children = child_pids(proc.pid)
        assert len(children) == 4
        assert set(end_offsets(a.bootstrap, a.topic)) == {0, 1}
        rc = RedisCluster.from_url(a.redis)
        rc.set("up-test", b"1")
        assert rc.get("up-test") == b"1"
        rc.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert wait_until(lambda: all(gone(p) for p in children), 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_children_die_with_a_sigkilled_parent() -> None:
    script = textwrap.dedent(
        """
        import json, sys, time
        from services.stack import EmbeddedStack
        stack = EmbeddedStack()
        stack.start()
        print(json.dumps({"pids": stack.pids(), "workdir": str(stack.workdir)}), flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert len(info["pids"]) == 2 and not any(gone(p) for p in info["pids"])
        proc.kill()
        proc.wait()
        assert wait_until(lambda: all(gone(p) for p in info["pids"]), 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # A SIGKILLed parent cannot clean up: its temp dir stays; remove it here.
    import shutil

    shutil.rmtree(info["workdir"], ignore_errors=True)
