"""`persona serve --processes N`: N serving processes on one port, one per core.

A gRPC Python server answers from one core (the GIL), and grpc must not be forked once a
server exists, so this is grpc's multiprocessing pattern (examples/python/multiprocessing):
the parent starts no server; its members each build a whole serving process of their own
and bind the same port with SO_REUSEPORT, and the kernel spreads connections over them.
In order:

1. the parent reserves the port (SO_REUSEPORT; port 0 picks one) and holds it to the end;
2. it spawns the members (`multiprocessing` "spawn": fresh interpreters, so no grpc,
   faiss or OpenBLAS thread state is copied); each first sets PR_SET_PDEATHSIG, so it dies
   with the parent, and runs the one-process serve: its own store client, its own index
   follower and index replica, its own metrics on a loopback port;
3. a member's readiness (health of the Persona service) says SERVING only once every
   member is ready (`ReadyBarrier`: one flag per member in memory the parent shares with
   them, so nothing is left on disk even when the parent is killed), so a probe that lands
   on any member speaks for all of them;
4. the parent's /metrics shows every member's series with a `process` label
   (`MemberMetrics` scrapes the members when it is scraped): sum them without `process`;
5. SIGTERM/SIGINT: the parent sends SIGTERM to every member (each drains and stops as a
   one-process serve does), then SIGKILL to what is left after `stop_timeout_s`. A member
   that exits by itself stops the others, and the parent exits 1: the pod restarts whole.

Each member holds a full index replica: N times the memory of one, no sharing to get wrong.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from services.children import die_with_parent, free_ports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """What one member process is told by the parent.

    Args:
        index: 0..count-1, the `process` label of its metrics.
        count: how many members share the port.
        port: the shared gRPC port.
        parent_pid: the parent, whose death kills the member.
        ready: one byte per member, 1 once it is ready (`ReadyBarrier`): a
            `multiprocessing` RawArray of the parent's, shared with every member.
        metrics_port: its own /metrics on 127.0.0.1 (0: none), scraped by the parent.
    """

    index: int
    count: int
    port: int
    parent_pid: int
    ready: Any
    metrics_port: int = 0

    def enter(self) -> None:
        """First thing in the member: die with the parent, leave the terminal's session (a
        Ctrl-C reaches the parent, which stops the members in order)."""
        with contextlib.suppress(OSError):
            os.setsid()
        preexec = die_with_parent(self.parent_pid)
        if preexec is not None:
            preexec()


class ReadyBarrier:
    """`ready(timeout_s)` for `ServingServer.start`: True once this member's own readiness
    (`own`, e.g. `IndexHolder.wait_ready`; None: ready at once) said so and every member
    has flagged itself ready in `member.ready`."""

    def __init__(self, member: Member, own: Callable[[float], bool] | None) -> None:
        self.member = member
        self.own = own

    def __call__(self, timeout_s: float) -> bool:
        m = self.member
        if not m.ready[m.index]:
            if self.own is not None and not self.own(timeout_s):
                return False
            m.ready[m.index] = 1
        if self.all_ready():
            return True
        time.sleep(min(timeout_s, 0.05))  # the caller loops: don't spin
        return self.all_ready()

    def all_ready(self) -> bool:
        return all(self.member.ready[: self.member.count])


class MemberMetrics:
    """A collector for the parent's registry: each member's /metrics, fetched at scrape
    time, every sample labelled `process="<index>"`, one family per name; plus
    `persona_serving_process_up{process}` (0 when a member did not answer)."""

    def __init__(self, ports: list[int], timeout_s: float = 2.0) -> None:
        self.ports = ports
        self.timeout_s = timeout_s

    def describe(self) -> list[Metric]:
        return []  # nothing fetched at registration

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        up = Metric("persona_serving_process_up", "1 when the member's /metrics answered.", "gauge")
        for i, port in enumerate(self.ports):
            label = {"process": str(i)}
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=self.timeout_s
                ) as resp:
                    text = resp.read().decode()
                parsed = list(text_string_to_metric_families(text))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # a member that did not answer, answered half (IncompleteRead) or garbled:
                # that member is down in this scrape, the others' series still come
                log.warning("member %d's /metrics (port %d) did not answer: %s", i, port, exc)
                up.add_sample(up.name, label, 0.0)
                continue
            up.add_sample(up.name, label, 1.0)
            for f in parsed:
                merged = families.setdefault(f.name, Metric(f.name, f.documentation, f.type))
                for s in f.samples:
                    merged.add_sample(s.name, {**s.labels, **label}, s.value, s.timestamp)
        yield up
        yield from families.values()


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to host:port with SO_REUSEPORT, held while the members
    run: port 0 picks a free one, and no other program can take the port meanwhile (only
    sockets that set SO_REUSEPORT too, as the members' grpc servers do, can share it)."""
    name = host.strip("[]") or None
    info = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as grpc's [::] does
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def run_members(
    target: Callable[[Any, Member], object],
    payload: Any,
    host: str,
    port: int,
    count: int,
    metrics: bool,
    stop: threading.Event,
    stop_timeout_s: float,
    on_started: Callable[[int, MemberMetrics | None], contextlib.AbstractContextManager[Any]],
) -> int:
    """Run `target(payload, member)` in `count` spawned processes sharing `host:port` until
    `stop` is set (0) or a member exits by itself (1). `metrics`: give each member a
    loopback /metrics port; `on_started(port, collector)` is entered once all are spawned
    (the parent's /metrics endpoint) and left after they stopped."""
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    ready = ctx.RawArray("b", count)  # anonymous shared memory: nothing on disk to clean up
    with reserve_port(host, port) as held:
        port = held.getsockname()[1]
        ports = free_ports(count) if metrics else [0] * count
        rc = 0
        try:
            for i in range(count):
                member = Member(i, count, port, os.getpid(), ready, ports[i])
                p = ctx.Process(target=target, args=(payload, member), name=f"persona-serve-{i}")
                p.start()
                procs.append(p)
                log.info("serving process %d: pid %d", i, p.pid)
            collector = MemberMetrics(ports) if metrics else None
            with on_started(port, collector):
                while not stop.wait(0.2):
                    dead = [(i, p.exitcode) for i, p in enumerate(procs) if not p.is_alive()]
                    if dead:
                        log.error("serving process(es) exited (index, code): %s; stopping", dead)
                        rc = 1
                        break
                log.info("stopping %d serving processes", count)
                stop_members(procs, stop_timeout_s)
        finally:
            stop_members(procs, stop_timeout_s)
    return rc


def stop_members(procs: list[Any], timeout_s: float) -> None:
    """SIGTERM every live member, wait up to `timeout_s` in all, SIGKILL the rest."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.warning("serving pid %s up %.0f s after SIGTERM; killing it", p.pid, timeout_s)
            p.kill()
            p.join(10)
