"""Reading and writing event dumps and vector files.

Events: JSON lines in the Event JSON shape (see `contract/events.py`), or Parquet with the
columns ``user_id, event_id, ts_ms, type, props`` where ``props`` is a JSON string, a
struct or a map. Both are streamed (`iter_events`): nothing reads a whole file into memory.
Property values: strings are categorical, numbers numeric, JSON booleans the numbers 0 / 1.
Vectors: Parquet with ``user_id, vector, model_version, n_events``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
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


class EventFileError(ValueError):
    """A line or row of an event file that is not an event (the message names where)."""


def iter_events(path: Path, batch_rows: int = 65_536) -> Iterator[Event]:
    """Stream the events of a JSON-lines or Parquet file, in file order, in bounded memory
    (one line, or one Parquet batch of `batch_rows`, at a time)."""
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        rows = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for r in batch.to_pylist():
                rows += 1
                try:
                    yield event_from_dict(r)
                except (KeyError, TypeError, ValueError) as exc:
                    raise EventFileError(f"{path}: row {rows}: not an event: {exc!r}") from None
        return
    with path.open() as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield event_from_dict(json.loads(line))
            except (KeyError, TypeError, ValueError) as exc:
                raise EventFileError(f"{path}: line {n}: not an event: {exc!r}") from None


def read_events(path: Path) -> list[Event]:
    """All events of a JSON-lines or Parquet file, in file order (small files; training and
    encoding stream with `iter_events`)."""
    return list(iter_events(path))


def events_source(path: Path) -> Callable[[], Iterator[Event]]:
    """A function that opens a fresh stream of the file's events each time it is called."""
    return lambda: iter_events(path)


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
