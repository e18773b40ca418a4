"""Child processes that never outlive us: started with `PR_SET_PDEATHSIG = SIGKILL`, logged
to a file, waited for with a probe that fails fast (with the log tail) if the child dies,
stopped with SIGTERM then SIGKILL. The embedded stack (`services/stack.py`) is built on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A child did not start or answer; the message ends with the tail of its log."""


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


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent (thread) dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Child:
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
                preexec_fn=die_with_parent(os.getpid()),
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


def stop_children(children: list[Child], timeout_s: float) -> None:
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


def wait_for_child(
    what: str, child: Child, probe: Callable[[], bool], deadline: float, every_s: float = 0.05
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
