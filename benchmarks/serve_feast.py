"""GetEmbeddings beside Feast, the serving benchmark's peer: Feast's in-process SDK
(`FeatureStore.get_online_features`) and `feast serve` (HTTP POST /get-online-features),
for the same ids of the same users with the same 64-float vectors, timed by the same loop.

Feast lives in its own virtualenv (`make bench-feast-env` makes `.venv-feast`; Persona does
not depend on it): `benchmarks/feast_side.py` runs there as a child process that answers
timing commands with its samples (its docstring lists its steps). `benchmarks/serve.py`
drives this with the GetEmbeddings call it times itself; without the Feast virtualenv it
prints why the Feast rows are missing and goes on.

In order: the users' ids, vectors and the requests go to a temp dir; the Feast child loads
them into Feast's Redis online store on the benchmark's Valkey nodes and starts `feast
serve`; then `rounds` rounds, each timing GetEmbeddings, the SDK and `feast serve` for
`seconds` apiece, one call at a time, the order turning by one path each round; finally the
child is told to quit (it stops `feast serve`), killed if it does not, and the temp dir goes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from serve_common import percentiles, timed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = ROOT / ".venv-feast" / "bin" / "python"
PERSONA, FRONT, SDK, HTTP = "persona", "front", "sdk", "http"
TARGETS = {SDK: 0.5, HTTP: 0.1}  # GetEmbeddings p50 / the Feast path's p50 at most (issue #19)
LABELS = {
    PERSONA: "GetEmbeddings (gRPC, persona serve)",
    FRONT: "GetEmbeddings (gRPC, Go front persona-front)",
    SDK: "Feast SDK `get_online_features` (in process)",
    HTTP: "`feast serve` (HTTP POST /get-online-features, 1 worker)",
}


@dataclass(frozen=True)
class Workload:
    """What both sides serve: the users' ids, their vectors (n, dim) and the requests."""

    ids: list[str]
    vecs: np.ndarray
    batches: list[list[str]]


class FeastPeer:
    """The Feast child process: started loaded and ready on enter, stopped on exit."""

    def __init__(self, python: Path, nodes: list[str], work: Workload) -> None:
        self.python, self.nodes, self.work = python, nodes, work
        self.version = "?"
        self.tmp: Path | None = None
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> FeastPeer:
        self.tmp = Path(tempfile.mkdtemp(prefix="persona-feast-"))
        try:
            (self.tmp / "ids.json").write_text(json.dumps(self.work.ids))
            np.save(self.tmp / "vectors.npy", self.work.vecs)
            (self.tmp / "batches.json").write_text(json.dumps(self.work.batches))
            cmd = [str(self.python), str(ROOT / "benchmarks" / "feast_side.py"),
                   "--redis", ",".join(self.nodes), "--data", str(self.tmp)]  # fmt: skip
            if len(self.nodes) > 1:
                cmd.append("--cluster")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, cwd=ROOT / "benchmarks")  # fmt: skip
            self.version = str(self._answer().get("feast", "?"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _answer(self) -> dict[str, Any]:
        assert self.proc is not None
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:  # Feast may print other lines; answers start with "@@ "
            if line.startswith("@@ "):
                return dict(json.loads(line[3:]))
        raise RuntimeError(f"the Feast side exited ({self.proc.wait()}); its stderr is above")

    def time(self, path: str, seconds: float) -> list[float]:
        """Samples (seconds a call) of `path` (SDK or HTTP), timed in the Feast child."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{path} {seconds}\n")
        self.proc.stdin.flush()
        return [float(s) for s in self._answer()["samples"]]

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None:
                try:
                    if self.proc.stdin is not None:
                        self.proc.stdin.write("quit\n")
                        self.proc.stdin.close()
                    self.proc.wait(60)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)


def rounds_of(gets: dict[str, Callable[[int], object]], peer: FeastPeer, rounds: int,
              seconds: float) -> dict[str, list[list[float]]]:  # fmt: skip
    """Each path's samples by round; within a round the paths take turns, the first path
    turning by one each round (persona, sdk, http; then sdk, http, persona; ...)."""
    order = [*gets, SDK, HTTP]
    out: dict[str, list[list[float]]] = {p: [] for p in order}
    for r in range(rounds):
        turn = r % len(order)
        for path in order[turn:] + order[:turn]:
            got = timed(gets[path], seconds) if path in gets else peer.time(path, seconds)
            out[path].append(got)
    return out


def summary(samples: dict[str, list[list[float]]]) -> dict[str, dict[str, Any]]:
    """Per path: p50 and p99 (ms) over all rounds' samples, calls, each round's p50 (ms);
    for the Feast paths also GetEmbeddings' p50 over theirs, its target and whether met."""
    out: dict[str, dict[str, Any]] = {}
    for path, by_round in samples.items():
        pooled = [s for r in by_round for s in r]
        p50, p99 = percentiles(pooled)
        out[path] = {"p50": p50, "p99": p99, "calls": len(pooled),
                     "rounds": [percentiles(r)[0] for r in by_round]}  # fmt: skip
    for path, target in TARGETS.items():
        ratios = {p: out[p]["p50"] / out[path]["p50"] for p in (PERSONA, FRONT) if p in out}
        out[path].update(ratios=ratios, target=target)
    return out


def table(s: dict[str, dict[str, Any]], head: str) -> str:
    """The summary as the head line, a markdown table and its command-free notes."""
    lines = [f"\n{head}", "",
             "| path | p50 ms | p99 ms | calls | p50 by round, ms | GetEmbeddings p50 / this |",
             "| --- | ---: | ---: | ---: | --- | --- |"]  # fmt: skip
    for path, row in s.items():
        rounds = " / ".join(f"{x:.2f}" for x in row["rounds"])
        vs = "; ".join(
            f"{'Go front ' if p == FRONT else ''}{r:.3f} (target <= {row['target']}: "
            f"{'met' if r <= row['target'] else 'not met'})"
            for p, r in row.get("ratios", {}).items()
        )
        lines.append(f"| {LABELS[path]} | {row['p50']:.2f} | {row['p99']:.2f} |"
                     f" {row['calls']:,} | {rounds} | {vs} |")  # fmt: skip
    return "\n".join(lines)


def compare(gets: dict[str, Callable[[int], object]], python: Path, nodes: list[str],
            work: Workload, rounds: int, seconds: float) -> str:  # fmt: skip
    """The whole comparison as text to print; a message instead when the Feast virtualenv is
    absent.
    `nodes` are the Valkey cluster's `host:port`s; `gets[path](i)` one GetEmbeddings call
    of each Persona path (PERSONA, and FRONT when the Go front runs)."""
    if not python.exists():
        return f"\nFeast rows skipped: no {python} (`make bench-feast-env` makes it)"
    with FeastPeer(python, nodes, work) as peer:
        samples = rounds_of(gets, peer, rounds, seconds)
        version = peer.version
    store = "3-node Valkey cluster (redis_type: redis_cluster)" if len(nodes) > 1 else "node"
    head = (f"GetEmbeddings beside Feast {version}: {len(work.batches[0])} ids a call, the same"
            f" users and {work.vecs.shape[1]}-float vectors, Feast's Redis online store on the same"
            f" {store}; {rounds} rounds x {seconds:g} s a path, one call at a time, the paths"
            " taking turns")  # fmt: skip
    return table(summary(samples), head)


if __name__ == "__main__":
    sys.exit("run benchmarks/serve.py (--feast-only for this comparison alone)")
