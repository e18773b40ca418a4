"""A loopback TCP proxy that delays what a server sends back: a slow store, injected.

    with DelayProxy(6379) as proxy:         # clients connect to proxy.port
        proxy.delay_s = 0.3                  # every reply chunk now waits 300 ms
        proxy.wait_requests(10, timeout_s=5) # ten request chunks have gone upstream

Replies are delayed per chunk on each connection, so one connection's replies stay in
order; connections are independent (a pool of clients sees the delay in parallel, as with
a slow Valkey node). Everything runs on daemon threads that `close()` stops and joins.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class DelayProxy:
    def __init__(self, upstream_port: int, delay_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.requests = 0  # chunks sent upstream (roughly: commands or pipelines)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._listener.accept()
            except OSError:
                continue  # timeout (poll the flag) or closed
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self._lock:
                self._socks += [down, up]
            self._spawn(self._pump, down, up, False)
            self._spawn(self._pump, up, down, True)

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while not self._closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if delayed and self.delay_s > 0:
                    time.sleep(self.delay_s)  # the injected latency itself
                elif not delayed:
                    with self._lock:
                        self.requests += 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def wait_requests(self, n: int, timeout_s: float) -> None:
        """Poll until `n` request chunks have gone upstream in total."""
        deadline = time.monotonic() + timeout_s
        while self.requests < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.requests} of {n} requests reached the store")
            time.sleep(0.01)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
