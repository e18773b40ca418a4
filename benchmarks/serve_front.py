"""The Go front (`front/go`, persona-front) for the serving benchmark: built with
`front/go/build.sh` into a temp dir, started before the benchmark's `persona serve` on the
same Valkey nodes, stopped (and the temp dir removed) on exit. Without Go and Debian's
packaged grpc-go (deploy/ensure-client-tools.sh installs them) `GoFront.start` returns the
reason instead, and the benchmark measures the rest.

The front answers the benchmark's GetEmbeddings itself (nearline: the benchmark's version
has no short-term head; the first call is forwarded and teaches it so) and forwards every
other call to the Python server: front/go/README.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from persona.v1 import service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "front" / "go" / "build.sh"
log = logging.getLogger("benchmarks.serve_front")


class GoFront:
    """A running persona-front: `address`; `stop()` ends it and removes its temp dir."""

    def __init__(self, proc: subprocess.Popen[str], tmp: Path, address: str) -> None:
        self.proc, self.tmp, self.address = proc, tmp, address

    @classmethod
    def start(cls, upstream_port: int, nodes: list[str], dim: int, *flags: str) -> GoFront | str:
        """The front before 127.0.0.1:`upstream_port`, reading `nodes` (`host:port`s or
        redis:// URLs: the front's `-store` takes both), with `flags` after the defaults
        (no served log, no models: `-models DIR` turns the short-term state path on); or
        why it could not be built or started."""
        if shutil.which("go") is None:
            return "Go front rows skipped: no `go` (deploy/ensure-client-tools.sh installs it)"
        tmp = Path(tempfile.mkdtemp(prefix="persona-front-"))
        proc: subprocess.Popen[str] | None = None
        try:
            exe = tmp / "persona-front"
            built = subprocess.run([str(BUILD), str(exe)], capture_output=True, text=True,
                                   timeout=900)  # fmt: skip
            if built.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                return f"Go front rows skipped: front/go/build.sh failed: {built.stderr[-500:]}"
            proc = subprocess.Popen(
                [str(exe), "-listen", "127.0.0.1:0", "-upstream", f"127.0.0.1:{upstream_port}",
                 "-store", ",".join(nodes), "-dim", str(dim),
                 "-served-log-rate", "0",  # as the benchmarks' persona serve: no served log
                 "-models", "", *flags],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                raise RuntimeError(f"persona-front exited ({proc.wait(10)})")
            info: dict[str, Any] = json.loads(line)
            return cls(proc, tmp, str(info["listen"]))
        except BaseException:
            if proc is not None:
                proc.kill()
                proc.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            if self.proc.stdout:
                self.proc.stdout.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def channel(front: GoFront | str) -> Iterator[Any]:
    """A UserEmbeddingService stub on the front (None, the reason logged, when `front` is
    why there is none); the channel closed and the front stopped on exit."""
    if isinstance(front, str):
        log.warning("%s", front)
        yield None
        return
    try:
        with grpc.insecure_channel(front.address) as ch:
            yield service_pb2_grpc.UserEmbeddingServiceStub(ch)
    finally:
        front.stop()
