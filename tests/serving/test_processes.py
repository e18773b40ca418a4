"""`persona serve --processes N` (services/serving/processes.py): members share one port,
health speaks for all of them, the parent's /metrics shows each, no member outlives the
parent, whether it is stopped (SIGTERM) or killed (SIGKILL), and a member that dies takes the
others and the parent down with it (exit 1); the Go front before them reaches both.

The integration tests run the parent as a real `python -m services.cli serve` process against
the shared Valkey; they wait on conditions (with a generous deadline), never on durations.
"""

from __future__ import annotations

import contextlib
import http.server
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from services.children import free_ports
from services.serving.config import ServeConfig
from services.serving.processes import Member, MemberMetrics, ReadyBarrier, reserve_port
from services.serving.server import SERVICE_NAME
from services.stack import EmbeddedStack
from tests.go_support import front_bin, go_env, launch_front, stop_front
from tests.serving.support import DB, DIM, V1

__all__ = ["front_bin", "go_env"]  # fixtures: the Go front before the members

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING


# -- the parts, in this process ---------------------------------------------------------------


def test_a_member_is_ready_only_once_every_member_is() -> None:
    own_ready = [False]
    flags = multiprocessing.get_context("spawn").RawArray("b", 2)  # as run_members shares it
    first = ReadyBarrier(Member(0, 2, 1, os.getpid(), flags), None)
    second = ReadyBarrier(Member(1, 2, 1, os.getpid(), flags), lambda _t: own_ready[0])
    assert not first(0.0)  # itself ready, its sibling not yet
    assert not second(0.0)  # its own readiness (the index) says no: no mark
    assert not first(0.0)
    own_ready[0] = True
    assert second(0.0)
    assert first(0.0)


def test_processes_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="processes"):
        ServeConfig(processes=0)


def test_the_reserved_port_is_shared_only_with_reuseport_sockets() -> None:
    with reserve_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with reserve_port("127.0.0.1", port):  # a member's socket: SO_REUSEPORT, shares it
            pass
        plain = socket.socket()
        with plain, pytest.raises(OSError):  # any other program: refused
            plain.bind(("127.0.0.1", port))


def test_the_parent_metrics_label_each_member_and_say_which_answered() -> None:
    servers = []
    ports = []
    for calls in (3, 5):
        registry = CollectorRegistry()
        Counter("persona_x_total", "x", registry=registry).inc(calls)
        server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append(server)
        ports.append(server.server_address[1])
    garbled = _garbled_metrics_server()  # a member answering what is not metrics text
    servers.append(garbled)
    (gone,) = free_ports(1)
    try:
        parent = CollectorRegistry()
        parent.register(MemberMetrics([*ports, gone, garbled.server_address[1]], timeout_s=5))
        assert parent.get_sample_value("persona_x_total", {"process": "0"}) == 3
        assert parent.get_sample_value("persona_x_total", {"process": "1"}) == 5
        up = [parent.get_sample_value("persona_serving_process_up", {"process": str(i)})
              for i in range(4)]  # fmt: skip
        assert up == [1, 1, 0, 0]  # the scrape survives the garbled one (it raised through)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _garbled_metrics_server() -> http.server.ThreadingHTTPServer:

    class Garbled(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"persona_x_total{process= 3 this is not metrics text\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbled)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- a real parent with two members ----------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait is missing


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(x) for x in (task / "children").read_text().split()}
    return found


def _listening(port: int) -> bool:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT does not count
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return False
    except OSError:
        return True
    finally:
        sock.close()


def _until(what: str, cond: Callable[[], bool], deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"not {what} within {deadline_s:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _fresh(port: int) -> Iterator[grpc.Channel]:
    """A channel with a connection of its own (no subchannel shared with other channels):
    the kernel picks a member per connection."""
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as ch:
        yield ch


def _health(port: int) -> int:
    with _fresh(port) as ch:
        req = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        try:
            return int(health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status)
        except grpc.RpcError:
            return -1


class Parent:
    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, metrics_port: int, tmp: Path
    ) -> None:
        self.proc = proc
        self.port = port
        self.metrics_port = metrics_port
        self.tmp = tmp
        self.members: set[int] = set()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }


@pytest.fixture
def parent(
    stack: EmbeddedStack, users: dict[str, dict[str, np.ndarray]], tmp_path: Path
) -> Iterator[Parent]:
    """`persona serve --processes 2 --no-index` as a child of this test, SERVING; whatever
    a test leaves running is killed after it."""
    port, metrics_port = free_ports(2)
    cmd = [sys.executable, "-m", "services.cli", "serve", "--no-index", "--processes", "2",
           "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
           "--redis", f"{stack.addresses.redis}/{DB}", "--dim", str(DIM),
           "--grace-s", "1"]  # fmt: skip
    log = tmp_path / "serve.log"
    tmp = tmp_path / "tmp"  # the parent's temp dir: nothing may be left in it (Parent.tmp)
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    p = Parent(proc, port, metrics_port, tmp)
    try:
        _until("SERVING", lambda: proc.poll() is not None or _health(port) == SERVING)
        assert proc.poll() is None, log.read_text()
        # every member sees the last mark on its own next check (every 50 ms; longer on a
        # loaded machine): SERVING on 10 fresh connections in a row, then the test starts
        _until("SERVING on every member", lambda: all(_health(port) == SERVING for _ in range(10)))
        p.members = _children(proc.pid)
        yield p
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in p.members:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
def test_two_processes_answer_on_one_port_and_health_speaks_for_both(
    parent: Parent, users: dict[str, dict[str, np.ndarray]]
) -> None:
    ids = list(users[V1])[:100]
    calls = 40
    for _ in range(calls):  # each on a connection of its own: spread over the members
        with _fresh(parent.port) as ch:
            stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
            resp = stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=ids), timeout=10)
            assert len(resp.statuses) == len(ids)
            # every member is ready (the fixture saw it): any connection says so
            req = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            assert health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status == SERVING
    samples = parent.metrics()
    key = (("code", "OK"), ("method", "GetEmbeddings"))
    served = {
        dict(labels)["process"]: value
        for (name, labels), value in samples.items()
        if name == "persona_serving_requests_total" and set(key) <= set(labels)
    }
    assert set(served) == {"0", "1"}, served  # both members answered (2^-39 to fail by chance)
    assert all(v > 0 for v in served.values()), served
    assert sum(served.values()) == calls  # each call counted once, by the member that took it
    for i in ("0", "1"):
        assert samples[("persona_serving_process_up", (("process", i),))] == 1


@pytest.mark.integration
def test_sigterm_to_the_parent_stops_every_member_and_frees_the_port(parent: Parent) -> None:
    members = parent.members
    assert len(members) >= 2 and all(_alive(pid) for pid in members)
    parent.proc.send_signal(signal.SIGTERM)
    assert parent.proc.wait(60) == 0
    _until("every member gone", lambda: not any(_alive(pid) for pid in members))
    assert not _listening(parent.port)
    assert not _listening(parent.metrics_port)
    assert not list(parent.tmp.iterdir())


@pytest.mark.integration
def test_a_killed_parent_leaves_no_member_behind(parent: Parent) -> None:
    members = parent.members
    assert len(members) >= 2 and all(_alive(pid) for pid in members)
    parent.proc.kill()  # SIGKILL: no handler runs; PR_SET_PDEATHSIG takes the members
    parent.proc.wait(30)
    _until("every member gone", lambda: not any(_alive(pid) for pid in members))
    _until("the port free", lambda: not _listening(parent.port))
    assert not list(parent.tmp.iterdir())  # nothing on disk that only the parent would remove


@pytest.mark.integration
def test_a_member_that_dies_stops_the_others_and_the_parent_exits_1(parent: Parent) -> None:
    members = parent.members
    serving = [pid for pid in members if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(serving) == 2  # (beside them: multiprocessing's resource tracker)
    os.kill(serving[0], signal.SIGKILL)
    assert parent.proc.wait(60) == 1  # the pod restarts whole, not with a member short
    _until("every member gone", lambda: not any(_alive(pid) for pid in members))
    _until("the port free", lambda: not _listening(parent.port))


@pytest.mark.integration
def test_the_go_front_spreads_forwarded_calls_over_every_member(
    parent: Parent, front_bin: Path, stack: EmbeddedStack
) -> None:
    """persona-front before `persona serve --processes 2` (the serving pod of k8s/serve.yaml):
    its calls forwarded over `-upstream-conns` connections in turn reach both members, where
    one connection would give every call to one (the kernel places connections, not calls).
    16 connections all on one member: 2^-15."""
    proc, info = launch_front(front_bin, parent.port, f"{stack.addresses.redis}/{DB}",
                              "-upstream-conns", "16", "-served-log-rate", "0",
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        calls = 64
        with grpc.insecure_channel(info["listen"]) as ch:  # one client connection to the front
            info_call = service_pb2_grpc.UserEmbeddingServiceStub(ch).GetModelInfo
            for _ in range(calls):
                with contextlib.suppress(grpc.RpcError):  # --no-index: any answer counts
                    info_call(pb.GetModelInfoRequest(), timeout=10)
    finally:
        stop_front(proc)
    served: dict[str, float] = {}
    for (name, labels), value in parent.metrics().items():
        got = dict(labels)
        if name == "persona_serving_requests_total" and got.get("method") == "GetModelInfo":
            served[got["process"]] = served.get(got["process"], 0.0) + value
    assert set(served) == {"0", "1"} and all(v > 0 for v in served.values()), served
    assert sum(served.values()) == calls
