"""The Feast side of the serving benchmark, run by `benchmarks/serve_feast.py` with the Feast
virtualenv's Python (`make bench-feast-env`: Feast is no dependency of Persona's).

    .venv-feast/bin/python benchmarks/feast_side.py --redis HOST:PORT[,HOST:PORT...] \
        --cluster --data DIR

In order:
1. A Feast repo in `DIR/repo`: local file registry, file offline store, Feast's Redis online
   store on the `--redis` nodes (redis-py client; `redis_type: redis_cluster` with
   `--cluster`); one entity `user_id` (string) and one feature view `user_vectors` with one
   feature `vector` (Array(Float32)); `apply`.
2. The users of `DIR/ids.json` with the vectors of `DIR/vectors.npy` written with
   `write_to_online_store`, then one request's values checked against the file.
3. `feast serve` (HTTP, its defaults but the access log) as a child process on a free port.
4. Commands, one a line on stdin: `sdk SECONDS` or `http SECONDS` times that path with the
   same loop as GetEmbeddings (`serve_common.timed`) over the requests of `DIR/batches.json`
   and answers one line `@@ {"path": ..., "samples": [seconds, ...]}` on stdout; `quit` or
   the end of stdin stops `feast serve` and exits.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from serve_common import timed

FEATURE = "user_vectors:vector"


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_repo(repo: Path, redis: str, cluster: bool) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    kind = "redis_cluster" if cluster else "redis"
    (repo / "feature_store.yaml").write_text(
        "project: persona_bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f"  redis_type: {kind}\n"
        f'  connection_string: "{redis}"\n'
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


def load(store: Any, data: Path, repo: Path) -> tuple[list[str], np.ndarray]:
    import pandas as pd
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float32

    ids: list[str] = json.loads((data / "ids.json").read_text())
    vecs = np.load(data / "vectors.npy")  # (n, dim) float32
    now = datetime.now(UTC)
    df = pd.DataFrame({"user_id": ids, "vector": list(vecs), "event_timestamp": now})
    df.head(10).to_parquet(repo / "users.parquet")  # the offline source: never read here
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = FileSource(path=str(repo / "users.parquet"), timestamp_field="event_timestamp")
    view = FeatureView(
        name="user_vectors",
        entities=[user],
        schema=[Field(name="vector", dtype=Array(Float32))],
        source=source,
        ttl=timedelta(0),
        online=True,
    )
    store.apply([user, view])
    t0 = time.perf_counter()
    for lo in range(0, len(df), 5000):
        store.write_to_online_store("user_vectors", df.iloc[lo : lo + 5000])
    print(f"feast: wrote {len(df)} users in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return ids, vecs


def start_server(repo: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port),
           "--no-access-log"]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (gunicorn and its workers), SIGKILL if need be."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def http_caller(port: int, bodies: list[bytes]) -> Any:
    """call(i): POST /get-online-features on one kept connection, the JSON reply parsed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}

    def call(i: int) -> object:
        for attempt in (0, 1):  # once more on a fresh connection if the kept one was closed
            try:
                conn.request("POST", "/get-online-features", bodies[i % len(bodies)], headers)
                r = conn.getresponse()
                body = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                conn.close()
                if attempt:
                    raise
        if r.status != 200:
            raise RuntimeError(f"feast serve: HTTP {r.status}: {body[:300]!r}")
        return json.loads(body)

    return call


def wait_ready(proc: subprocess.Popen[bytes], port: int, body: bytes, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"feast serve exited: {log.read_text()[-2000:]}")
        try:
            http_caller(port, [body])(0)
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.5)
    raise TimeoutError(f"feast serve not ready: {log.read_text()[-2000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--redis", required=True, help="host:port[,host:port...]")
    p.add_argument("--cluster", action="store_true", help="redis_type: redis_cluster")
    p.add_argument("--data", type=Path, required=True)
    args = p.parse_args()
    from feast import FeatureStore

    repo = args.data / "repo"
    make_repo(repo, args.redis, args.cluster)
    store = FeatureStore(repo_path=str(repo))
    ids, vecs = load(store, args.data, repo)
    batches: list[list[str]] = json.loads((args.data / "batches.json").read_text())
    row = {u: i for i, u in enumerate(ids)}
    got = store.get_online_features(features=[FEATURE], entity_rows={"user_id": batches[0]})
    back = np.asarray(got.to_dict()["vector"], np.float32)  # (batch, dim)
    if not np.array_equal(back, vecs[[row[u] for u in batches[0]]]):
        raise RuntimeError("Feast returned other vectors than were written")

    def sdk(i: int) -> object:
        rows = {"user_id": batches[i % len(batches)]}
        return store.get_online_features(features=[FEATURE], entity_rows=rows).to_dict()

    bodies = [
        json.dumps({"features": [FEATURE], "entities": {"user_id": b}}).encode() for b in batches
    ]
    port = free_port()
    log = args.data / "feast-serve.log"
    server = start_server(repo, port, log)
    try:
        wait_ready(server, port, bodies[0], log)
        calls = {"sdk": sdk, "http": http_caller(port, bodies)}
        reply({"ready": True, "feast": importlib.metadata.version("feast")})
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            samples = timed(calls[words[0]], float(words[1]))
            reply({"path": words[0], "samples": samples})
    finally:
        stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
