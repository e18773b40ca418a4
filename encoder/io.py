"""Reading and writing event dumps and vector files.

Events: JSON lines in the Event JSON shape (see `encoder/events.py`), or Parquet with the
columns ``user_id, event_id, ts_ms, type, props`` where ``props`` is a JSON string, a
struct or a map. Vectors: Parquet with ``user_id, vector, model_version, n_events``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.events import Event, PropValue


def _props(raw: Any) -> dict[str, PropValue]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = json.loads(raw) if raw else {}
    if isinstance(raw, list):  # a Parquet map comes back as [(key, value), ...]
        raw = dict(raw)
    out: dict[str, PropValue] = {}
    for k, v in raw.items():
        if v is None:
            continue
        out[str(k)] = v if isinstance(v, str) else float(v)
    return out


def event_from_dict(d: dict[str, Any]) -> Event:
    return Event(
        user_id=str(d["user_id"]),
        event_id=str(d["event_id"]),
        ts_ms=int(d["ts_ms"]),
        type=str(d["type"]),
        props=_props(d.get("props")),
    )


def read_events(path: Path) -> list[Event]:
    """All events of a JSON-lines or Parquet file, in file order."""
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return [event_from_dict(r) for r in pq.read_table(path).to_pylist()]
    out: list[Event] = []
    with path.open() as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(event_from_dict(json.loads(line)))
    return out


def write_events_jsonl(path: Path, events: Iterable[Event]) -> None:
    with Path(path).open("w") as f:
        for e in events:
            f.write(json.dumps(e.to_json_dict()))
            f.write("\n")


def write_vectors(
    path: Path,
    user_ids: Sequence[str],
    vectors: np.ndarray,
    model_version: str,
    n_events: Sequence[int],
) -> None:
    """Parquet: user_id (string), vector (list<float32>), model_version, n_events (int32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vec = pa.FixedSizeListArray.from_arrays(
        pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1)), vectors.shape[1]
    )
    table = pa.table(
        {
            "user_id": pa.array(list(user_ids), pa.string()),
            "vector": vec.cast(pa.list_(pa.float32())),
            "model_version": pa.array([model_version] * len(user_ids), pa.string()),
            "n_events": pa.array(list(n_events), pa.int32()),
        }
    )
    pq.write_table(table, path)
