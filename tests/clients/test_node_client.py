"""The Node client (clients/node: @grpc/grpc-js, stubs from the .proto by
@grpc/proto-loader) against a live server: its unit tests (`node --test`), then `fetch.js`
asking for embeddings (float32 and float16, with history) and lookalikes."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import numpy as np
import pytest

from services.store.records import StoredVector
from services.store.vectors import VectorStore
from tests.clients.conftest import NODE_DIR, check_neighbors
from tests.serving.support import DIM, NOW_MS, V1, Running

pytestmark = pytest.mark.integration


def _fetch(node: str, r: Running, *args: str, token: str | None = None) -> dict[str, Any]:
    env = {**os.environ, **({"PERSONA_TOKEN": token} if token else {})}
    proc = subprocess.run(
        [node, str(NODE_DIR / "fetch.js"), "--target", f"127.0.0.1:{r.server.port}", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_node_unit_tests(node: str) -> None:
    proc = subprocess.run(
        [node, "--test", "test/"], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_node_client_fetches_embeddings_and_lookalikes(
    node: str, running: Running, vstore: VectorStore, users: dict[str, dict[str, np.ndarray]]
) -> None:
    vecs = [np.full(DIM, i - 0.5, np.float32) for i in range(3)]
    vstore.put_batch(
        [StoredVector("js-h", V1, v, NOW_MS + i, 7, i + 1) for i, v in enumerate(vecs)]
    )
    got = _fetch(node, running, "--ids", "js-h,u3,nobody", "--history", "2",
                 "--lookalike", "u4", "--k", "5")  # fmt: skip
    assert got["model_version"] == V1
    assert got["statuses"] == [
        "EMBEDDING_STATUS_FOUND", "EMBEDDING_STATUS_FOUND", "EMBEDDING_STATUS_NOT_FOUND"
    ]  # fmt: skip
    rows = np.array(got["vectors"], np.float32)
    np.testing.assert_array_equal(rows[0], vecs[2])
    np.testing.assert_array_equal(rows[1], users[V1]["u3"])
    assert not rows[2].any()
    assert got["n_events"] == [7, 13, 0] and got["age_seconds"][2] == 0
    assert got["history_counts"] == [2, 0, 0]
    np.testing.assert_array_equal(np.array(got["history_vectors"], np.float32), vecs[1::-1])

    u = users[V1]
    check_neighbors(got, u, "u4")

    half = _fetch(node, running, "--ids", "u1", "--float16")
    np.testing.assert_allclose(half["vectors"][0], u["u1"], rtol=2e-3, atol=2e-3)
