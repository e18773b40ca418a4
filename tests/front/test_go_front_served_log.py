"""persona-front's served log (front/go/front/servedlog.go, front/go/kafka): at rate 1 the
front writes every answered row of the GetEmbeddings it answers itself to the served-log
topic of a real Tansu broker, as persona serve's ServedLog writes the ones it answers: key,
partition (librdkafka's default partitioner: a control record sent with persona's own
producer lands on the same partition of a topic as wide) and value byte for byte
(`Sample.records()` given the record's fields). A forwarded call is logged once, by Python.
No timing assertions: everything is polled with generous deadlines."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from persona.v1 import service_pb2 as pb

from services.common.kafka import producer, rdkafka_config
from services.config import KafkaConfig
from services.index.holder import IndexHolder
from services.serving.config import ServedLogConfig
from services.serving.embeddings import FOUND, NOT_FOUND
from services.serving.metrics import ServingMetrics
from services.serving.served_log import Sample, ServedLog
from services.stack import EmbeddedStack
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from tests.front.conftest import Front, scrape, store_address, stub
from tests.serving.support import DB, DIM, NOW_MS, V1, V2, Running

pytestmark = pytest.mark.integration

PARTITIONS = 3  # the librdkafka fixtures of the Go tests have 4 (its mock cluster's)
SERVED = "persona_serving_served_log_records_total"
FRONT_SERVED = "persona_front_served_log_records_total"
NEARLINE = pb.VECTOR_PART_NEARLINE
# ids json.dumps escapes (quotes, backslash, control characters) or keeps (non-ASCII, astral)
ODD = ["évé-ü", 'q"uo\\te', "tab\tnl\n\x01", "😀/x"]
HISTORY = "hist-ü"  # two vectors: only the newest one's computed_at is logged
DEADLINE_S = 120.0


def metric(front: Front, name: str, **labels: str) -> float:
    samples = scrape(front)[0]
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError(f"no {name}{labels} in {sorted(samples)}")
    return samples[key]


def wait_for(what: str, ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ok():
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE_S:.0f} s"
        time.sleep(0.2)


def read_all(bootstrap: str, topic: str, want: int) -> list[tuple[int, bytes, bytes]]:
    """Every record of `topic` as (partition, key, value) (CRCs checked by librdkafka): at
    least `want`, then what else comes within 3 polls that find nothing. Called once every
    record was acknowledged, so one written twice would be there already. (Tansu's high
    watermark is the last batch's base offset + 1, not the end of a multi-record batch: it
    cannot say where the end is.)"""
    c = Consumer({**rdkafka_config(bootstrap), "group.id": f"tests-served-{time.monotonic_ns()}",
                  "enable.auto.commit": False, "check.crcs": True})  # fmt: skip
    try:
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        c.assign(tps)
        out: list[tuple[int, bytes, bytes]] = []
        deadline, idle = time.monotonic() + DEADLINE_S, 0
        while len(out) < want or idle < 3:
            got = c.consume(500, 0.5)
            idle = 0 if got else idle + 1
            for m in got:
                assert m.error() is None, m.error()
                out.append((m.partition() or 0, m.key() or b"", m.value() or b""))
            assert time.monotonic() < deadline, f"{len(out)} of {want} records"
        return out
    finally:
        c.close()


def control_partitions(bootstrap: str, topic: str, keys: list[bytes]) -> dict[bytes, int]:
    """The partition persona's own producer (services/common/kafka.py) gives each key."""
    p = producer(KafkaConfig(bootstrap=bootstrap))
    try:
        for k in keys:
            p.send(topic, b"control", k)
        p.flush(60)
    finally:
        p.close()
    return {k: part for part, k, _ in read_all(bootstrap, topic, len(keys))}


def test_front_writes_its_local_answers_to_the_served_log_as_python_does(
    start_front: Callable[..., Front],
    serve: Callable[..., Running],
    vstore: VectorStore,
    holder: IndexHolder,
    users: dict[str, Any],
    stack: EmbeddedStack,
    make_topic: Callable[..., str],
) -> None:
    bootstrap = stack.addresses.bootstrap
    topic = make_topic(bootstrap, PARTITIONS, "served")
    vstore.put_batch([StoredVector(u, V1, np.full(DIM, i + 1.0, np.float32), NOW_MS - 100 - i, 3, 2)
                      for i, u in enumerate([*ODD, HISTORY])])  # fmt: skip
    vstore.put_batch([StoredVector(HISTORY, V1, np.ones(DIM, np.float32), NOW_MS - 7, 4, 3)])

    def python_log(m: ServingMetrics) -> ServedLog:
        cfg = ServedLogConfig(rate=1.0, topic=topic)
        return ServedLog(cfg, lambda: producer(KafkaConfig(bootstrap=bootstrap)), m)

    upstream = serve(vstore, holder, served_log=python_log)
    front = start_front(upstream.server.port, store_address(vstore), "-db", str(DB),
                        "-version-cache", "0s", "-metrics-listen", "127.0.0.1:0",
                        "-served-log-rate", "1", "-served-topic", topic,
                        "-kafka", bootstrap)  # fmt: skip
    s = stub(front.channel)
    t0_ms = int(time.time() * 1000)
    # forwarded (the dimension is not known yet): Python logs its rows, the front does not
    s.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1", "u2"]),
                    metadata=(("x-request-id", "fwd-1"),), timeout=10)  # fmt: skip
    calls = [  # answered by the front: (request, x-request-id or None: the front's own)
        (pb.GetEmbeddingsRequest(user_ids=["u1", "nobody", "u2"], part=NEARLINE), "loc-1"),
        (pb.GetEmbeddingsRequest(user_ids=["u3", "u3"], part=NEARLINE, history_depth=1),
         'r"q\\/x'),  # printable ASCII: json.dumps escapes the quote and backslash
        (pb.GetEmbeddingsRequest(user_ids=[*ODD, HISTORY, "gone"], part=NEARLINE,
                                 history_depth=2), None),
        (pb.GetEmbeddingsRequest(user_ids=["u4", "u1"], model_version=V2, part=NEARLINE),
         "loc-4"),
    ]  # fmt: skip
    want: dict[str, list[tuple[str, str, int, int]]] = {}  # rid -> (uid, version, code, at)
    for req, rid in calls:
        md = (("x-request-id", rid),) if rid is not None else ()
        resp, call = s.GetEmbeddings.with_call(req, metadata=md, timeout=10)
        got_rid = dict(call.initial_metadata())["x-request-id"]
        assert rid is None or got_rid == rid
        want[got_rid] = [
            (uid, resp.model_version, FOUND if st == pb.EMBEDDING_STATUS_FOUND else NOT_FOUND,
             resp.meta.computed_at_ms[i])
            for i, (uid, st) in enumerate(zip(req.user_ids, resp.statuses, strict=True))
        ]  # fmt: skip
    assert len(want) == len(calls)  # the front's own request id is one more
    local_rows = sum(len(rows) for rows in want.values())
    assert metric(front, "persona_front_get_embeddings_total", outcome="local") == len(calls)
    assert metric(front, "persona_front_get_embeddings_total", outcome="forwarded") == 1

    wait_for("acknowledged", lambda: metric(front, FRONT_SERVED, outcome="sent") == local_rows
             and upstream.sample(SERVED, outcome="sent") == 2)  # fmt: skip
    assert metric(front, FRONT_SERVED, outcome="failed") == 0
    assert metric(front, FRONT_SERVED, outcome="dropped") == 0
    records = read_all(bootstrap, topic, local_rows + 2)
    assert len(records) == local_rows + 2  # nothing twice, nothing else
    by_rid: dict[str, list[tuple[int, bytes, bytes]]] = {}
    for part, key, value in records:
        by_rid.setdefault(json.loads(value)["request_id"], []).append((part, key, value))
    assert sorted(json.loads(v)["user_id"] for _, _, v in by_rid.pop("fwd-1")) == ["u1", "u2"]
    assert by_rid.keys() == want.keys()

    keys = sorted({k for recs in by_rid.values() for _, k, _ in recs})
    partition_of = control_partitions(bootstrap, make_topic(bootstrap, PARTITIONS, "control"),
                                      keys)  # fmt: skip
    assert len(set(partition_of.values())) > 1, partition_of  # the keys spread
    now_ms = int(time.time() * 1000)
    for rid, rows in want.items():
        got = by_rid[rid]
        served_at = {json.loads(v)["served_at_ms"] for _, _, v in got}
        assert len(served_at) == 1, served_at  # one sample per call
        (at,) = served_at
        assert t0_ms <= at <= now_ms
        sample = Sample(at, rid, rows[0][1], [r[0] for r in rows],
                        np.array([r[2] for r in rows], np.uint8),
                        np.array([r[3] for r in rows], np.int64))  # fmt: skip
        assert Counter((k, v) for _, k, v in got) == Counter(sample.records()), rid
        for part, key, _ in got:
            assert part == partition_of[key], (key, part, partition_of[key])
    hist = next(json.loads(v) for recs in by_rid.values() for _, k, v in recs
                if k == HISTORY.encode())  # fmt: skip
    assert hist["computed_at_ms"] == NOW_MS - 7  # the newest vector's

    local, forwarded = front.counts()
    assert (local, forwarded) == (len(calls), 1)
    closed = f"served log closed (rows sent {local_rows}, failed 0, dropped 0)"
    assert closed in (front.stderr or "")
