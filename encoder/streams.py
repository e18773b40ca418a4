"""Forward passes on several CPU threads at once, each with its own few intra-op threads.

    streams = Streams(2)  # 2 threads, each running passes with half this thread's torch threads
    streams.map(run_pass, groups)  # the groups' passes, two at a time
    streams.close()

One pass's operations are small (8,192 tokens of a 128-wide model) and gain little from
a second OpenMP thread (4 passes, 2 cores: 98-102 ms on 1 thread, 80-100 on 2), and its
tokenising (Python, a quarter of the pass) holds one core while the other waits. Two
passes side by side, one thread each, keep both cores busy: 1.16-1.18x the compiled bf16
encode on 2 threads, the same vectors (`benchmarks/encode.py`, docs/benchmarks.md
2026-12-03). The torch operations release the GIL; only tokenising and the Python between
them take turns.

Each stream thread sets its own torch thread count (`torch.set_num_threads` is per thread
for OpenMP; it also sets the default of threads started later, which `Streams` puts back
once its threads are up). A compiled graph is
specialised on the thread count it was compiled under (Dynamo guards on it, and a graph
met under another count compiles again, seconds, and two threads compiling at once were
seen to deadlock): `call` runs a compile on a stream thread, so the graph it leaves is
the one the passes find.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


def default_threads(n: int) -> int:
    """Torch threads per stream when `n` streams share what one pass would use: this
    thread's torch thread count (`OMP_NUM_THREADS`, else torch's default: the machine's
    cores, which in a container with a CPU limit are the node's, so set it there)."""
    return max(1, torch.get_num_threads() // n)


def _own_threads(n: int) -> None:
    """This thread's torch thread count. Torch sets a thread's count from the process
    default at its first parallel operation, over any set before: read it first."""
    torch.get_num_threads()
    torch.set_num_threads(n)


class Streams:
    """`n` threads that run forward passes, each with `threads` torch threads. `close` stops
    them; the next `map` or `call` starts them again (same counts: the same compiled graph)."""

    def __init__(self, n: int, threads: int | None = None) -> None:
        if n < 2:
            raise ValueError(f"streams: at least 2 (1 is the caller's thread), got {n}")
        self.n = n
        self.threads = threads or default_threads(n)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._started()

    def _started(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                here = torch.get_num_threads()
                pool = ThreadPoolExecutor(
                    self.n,
                    thread_name_prefix="encode-stream",
                    initializer=_own_threads,
                    initargs=(self.threads,),
                )
                up = threading.Barrier(self.n + 1, timeout=60)
                for _ in range(self.n):  # each waits: the pool starts all n threads now
                    pool.submit(up.wait)
                up.wait()
                torch.set_num_threads(here)  # the default of later threads, as it was
                self._pool = pool
            return self._pool

    def map(self, fn: Callable[[T], object], items: Iterable[T]) -> None:
        """`fn` of every item, `n` at a time; the first exception is raised here (after
        the passes already running finish)."""
        for _ in self._started().map(fn, items):
            pass

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on a stream thread (a compile: see the module docstring)."""
        return self._started().submit(fn).result()

    def close(self) -> None:
        """Stop the threads (after the passes already submitted)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
