"""Step lines, and the `persona` commands the demo runs as child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

PERSONA = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"\n==> {title}", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"    ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(args: Sequence[str], env: dict[str, str], quiet: bool = True) -> str:
    """Run `persona ARGS` to completion; its stdout is returned, stderr shown unless quiet."""
    out = subprocess.run(
        [*PERSONA, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        tail = (out.stderr or "")[-3000:]
        raise RuntimeError(f"persona {' '.join(args)} failed ({out.returncode}):\n{tail}")
    return out.stdout


@contextmanager
def background(
    args: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`persona ARGS` as a long-running child; SIGTERM (then SIGKILL) when the block ends."""
    with log.open("wb") as fh:
        proc = subprocess.Popen([*PERSONA, *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    env.update(extra)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env
