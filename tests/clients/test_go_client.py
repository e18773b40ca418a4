"""The Go client (clients/go), built in GOPATH mode from Debian's packaged grpc-go and
protobuf-go sources, against a live server: its unit tests, then `persona-fetch` asking
for embeddings (float32 and float16, with history) and lookalikes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.store.records import StoredVector
from services.store.vectors import VectorStore
from tests.clients.conftest import check_neighbors
from tests.go_support import GO_IMPORT
from tests.serving.support import DIM, NOW_MS, V1, V2, Running

pytestmark = pytest.mark.integration


def _fetch(exe: Path, r: Running, env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(exe), "-target", f"127.0.0.1:{r.server.port}", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_go_unit_tests(go_env: dict[str, str]) -> None:
    proc = subprocess.run(
        ["go", "test", f"{GO_IMPORT}/persona"], env=go_env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_go_client_fetches_embeddings_and_lookalikes(
    go_fetch: Path, go_env: dict[str, str], running: Running, vstore: VectorStore,
    users: dict[str, dict[str, np.ndarray]],
) -> None:  # fmt: skip
    vecs = [np.full(DIM, i + 0.25, np.float32) for i in range(2)]
    vstore.put_batch(
        [StoredVector("go-h", V1, v, NOW_MS + i, 2, i + 1) for i, v in enumerate(vecs)]
    )
    got = _fetch(go_fetch, running, go_env, "-ids", "u3,nobody,go-h", "-history", "1",
                 "-lookalike", "u4", "-k", "5")  # fmt: skip
    assert got["model_version"] == V1
    assert got["statuses"] == [
        "EMBEDDING_STATUS_FOUND", "EMBEDDING_STATUS_NOT_FOUND", "EMBEDDING_STATUS_FOUND"
    ]  # fmt: skip
    rows = np.array(got["vectors"], np.float32)
    np.testing.assert_array_equal(rows[0], users[V1]["u3"])
    assert not rows[1].any()
    np.testing.assert_array_equal(rows[2], vecs[1])
    assert got["n_events"] == [13, 0, 2] and got["age_seconds"][1] == 0
    assert got["history_counts"] == [0, 0, 1]
    np.testing.assert_array_equal(np.array(got["history_vectors"], np.float32), vecs[:1])

    u = users[V1]
    check_neighbors(got, u, "u4")

    half = _fetch(go_fetch, running, go_env, "-ids", "u1", "-float16")
    np.testing.assert_allclose(half["vectors"][0], u["u1"], rtol=2e-3, atol=2e-3)


def test_go_client_fetches_outcome_scores(
    go_fetch: Path, go_env: dict[str, str], running: Running, vstore: VectorStore
) -> None:
    """-scores: the stored scores per row, null (NaN) for a row without any; none unasked."""
    cols = [{"outcome": "(any)", "horizon_ms": 3_600_000, "calibrated": True}] * 2
    vstore.set_score_columns(V2, json.dumps({"columns": cols}))
    vstore.put_batch([StoredVector("go-s", V2, np.ones(DIM, np.float32), NOW_MS, 3, 1,
                                   np.array([0.25, 0.75], np.float32))])  # fmt: skip
    got = _fetch(go_fetch, running, go_env, "-ids", "go-s,nobody", "-version", V2, "-scores")
    assert got["n_scores"] == 2 and got["outcome_scores"] == [[0.25, 0.75], [None, None]]
    plain = _fetch(go_fetch, running, go_env, "-ids", "go-s", "-version", V2)
    assert plain["n_scores"] == 0 and plain["outcome_scores"] == [[]]


def test_go_client_reports_an_unreachable_server(go_fetch: Path, go_env: dict[str, str]) -> None:
    """UNAVAILABLE, retried by the service config within the deadline, then reported."""
    proc = subprocess.run(
        [str(go_fetch), "-target", "127.0.0.1:1", "-ids", "u1", "-timeout", "1s"],
        env=go_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Unavailable" in proc.stderr or "DeadlineExceeded" in proc.stderr, proc.stderr
