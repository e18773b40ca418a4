"""Fixtures of the client tests: the serving tests' live server (a real Valkey, db 9, and a
real index; tests/serving/conftest.py), and the Go and Node toolchains.

The toolchains come from deploy/ensure-client-tools.sh (`make test` runs it). A test that
needs one skips, saying what is missing and how to install it, only when it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.go_support import ENSURE, GO_DIR, GO_IMPORT, go_env
from tests.serving.conftest import holder, running, serve, users, vstore
from tests.serving.support import unit

__all__ = [
    "check_neighbors", "go_env", "go_fetch", "holder", "node", "running", "serve", "users",
    "vstore",
]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"


@pytest.fixture(scope="session")
def go_fetch(go_env: dict[str, str]) -> Path:
    """clients/go/cmd/persona-fetch, built."""
    out = GO_DIR / ".gopath" / "bin" / "persona-fetch"
    proc = subprocess.run(
        ["go", "build", "-o", str(out), f"{GO_IMPORT}/cmd/persona-fetch"],
        env=go_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with clients/node's dependencies installed."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip(f"node not installed: {ENSURE} installs nodejs and npm")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"clients/node dependencies missing (npm ci): {ENSURE}")
    return exe


def check_neighbors(got: dict[str, list], vectors: dict[str, np.ndarray], uid: str) -> None:
    """A client's `neighbors` / `scores` for `uid` are the exact cosine top k, in order."""
    sims = {w: float(unit(v) @ unit(vectors[uid])) for w, v in vectors.items()}
    want = sorted(sims, key=lambda w: -sims[w])[: len(got["neighbors"])]
    assert got["neighbors"] == want and len(want) > 1
    np.testing.assert_allclose(got["scores"], [sims[w] for w in want], atol=1e-5)
