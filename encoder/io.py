"""Reading and writing event dumps and vector files.

Events: JSON lines in the Event JSON shape (see `contract/events.py`), or Parquet with the
columns ``user_id, event_id, ts_ms, type, props`` where ``props`` is a JSON string, a
struct or a map. Both are streamed (`iter_events`): nothing reads a whole file into memory;
JSON lines may be gzip-compressed (``.gz``). Ids are non-empty strings (an integer id is
taken as its decimal text), ``ts_ms`` milliseconds (an integer, a float or decimal whose
fraction is dropped, or an integer's decimal text). Property values: strings are
categorical, numbers numeric, booleans the numbers 0 / 1 (as ingest takes them); null and
NaN are absent. A line or row that is not such an event stops the read with
`EventFileError` naming it (nothing is dropped silently).
Vectors: Parquet with ``user_id, vector, model_version, n_events``.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from contract.events import Event, PropValue
from contract.record import MAX_ID_BYTES

# Files are read more leniently than ingest's wire contract (contract/codec.py) in the forms
# real dumps take: integer ids, float or text times, NaN as absent, Decimal numbers; ids
# as long as ingest takes them (contract.record.MAX_ID_BYTES)
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def _text(v: Any, what: str, ints: bool = True) -> str:
    """A non-empty UTF-8 string of at most `MAX_ID_BYTES`; an integer id (not a bool) is
    its decimal text when `ints`, bytes are decoded as UTF-8; anything else is refused."""
    if isinstance(v, bytes):
        v = v.decode("utf-8")  # UnicodeDecodeError: a ValueError, reported with the line
    elif ints and isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not v:
        raise ValueError(f"{what} must be a non-empty string, got {v!r:.60}")
    n = len(v) if v.isascii() else len(_utf8(v, what))
    if n > MAX_ID_BYTES:
        raise ValueError(f"{what} is {n} bytes long (at most {MAX_ID_BYTES})")
    return v


def _utf8(v: str, what: str) -> bytes:
    try:
        return v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON)
        raise ValueError(f"{what} {v!r:.60} is not valid Unicode (a lone surrogate)") from None


def _ts(v: Any) -> int:
    """Milliseconds since the epoch, in ``[0, MAX_TS_MS]``: an integer, a finite float or
    decimal (its fraction dropped, as `time.time() * 1000` writes them), or the decimal
    text of an integer (BigQuery's JSON export writes INT64 as strings)."""
    if isinstance(v, float | Decimal) and math.isfinite(v):
        v = int(v)
    elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v.strip())
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"ts_ms must be an integer of milliseconds, got {v!r:.60}")
    if not 0 <= v <= MAX_TS_MS:
        raise ValueError(f"ts_ms {v} is outside [0, {MAX_TS_MS}] (milliseconds since 1970)")
    return v


def _props(raw: Any) -> dict[str, PropValue]:
    """Properties: an object (or its JSON text, or a Parquet map's pairs) of strings
    (categorical), numbers and booleans (numeric; a boolean is 0 / 1). A null or NaN value
    is absent; an infinite one, a nested object or list, an empty or over-long name is
    refused."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = json.loads(raw) if raw else {}
    if isinstance(raw, list):  # a Parquet map comes back as [(key, value), ...]
        raw = dict(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"props must be an object, got {type(raw).__name__} {raw!r:.60}")
    out: dict[str, PropValue] = {}
    for k, v in raw.items():
        name = _text(k, "a property name")
        if v is None:
            continue
        if isinstance(v, str):
            if not v.isascii():
                _utf8(v, f"property {name!r:.60}")  # refuses a lone surrogate
            out[name] = v
        elif isinstance(v, int | float | Decimal):  # bool is an int: 0 / 1; Parquet DECIMAL
            try:
                f = float(v)
            except OverflowError:
                raise ValueError(f"property {name!r:.60} is outside the float range") from None
            if math.isinf(f):
                raise ValueError(f"property {name!r:.60} is infinite")
            if not math.isnan(f):
                out[name] = f
        else:
            raise ValueError(
                f"property {name!r:.60} is a {type(v).__name__}, not a string, number or bool"
            )
    return out


def event_from_dict(d: dict[str, Any]) -> Event:
    if not isinstance(d, dict):
        raise ValueError(f"an event is a JSON object, got {type(d).__name__} {d!r:.60}")
    for key in ("user_id", "event_id", "ts_ms", "type"):
        if d.get(key) is None:
            raise ValueError(f"no {key}")
    return Event(
        user_id=_text(d["user_id"], "user_id"),
        event_id=_text(d["event_id"], "event_id"),
        ts_ms=_ts(d["ts_ms"]),
        type=_text(d["type"], "type", ints=False),
        props=_props(d.get("props")),
    )


class EventFileError(ValueError):
    """A line or row of an event file that is not an event, or a file that cannot be read
    as events (the message names the file, and the line or row)."""


_NOT_AN_EVENT = (KeyError, TypeError, ValueError, OverflowError, AttributeError, RecursionError)


def iter_events(path: Path, batch_rows: int = 65_536) -> Iterator[Event]:
    """Stream the events of a JSON-lines (``.gz``: gzip-compressed) or Parquet file, in
    file order, in bounded memory (one line, or one Parquet batch of `batch_rows`, at a
    time). Anything that is not an event raises `EventFileError` naming the line or row."""
    path = Path(path)
    if not path.is_file():
        raise EventFileError(f"{path}: no such file")
    if path.suffix in (".parquet", ".pq"):
        yield from _parquet_events(path, batch_rows)
        return
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        n = 0
        try:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    yield event_from_dict(json.loads(line.decode("utf-8")))
                except _NOT_AN_EVENT as exc:
                    raise EventFileError(f"{path}: line {n}: not an event: {exc}") from None
        except OSError as exc:  # gzip.BadGzipFile, EOFError's kin, a read error
            raise EventFileError(f"{path}: after line {n}: cannot read: {exc}") from None
        except EOFError as exc:  # a truncated gzip stream
            raise EventFileError(f"{path}: after line {n}: truncated: {exc}") from None


def _parquet_events(path: Path, batch_rows: int) -> Iterator[Event]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    except (pa.ArrowException, OSError) as exc:
        raise EventFileError(f"{path}: not a Parquet file of events: {exc}") from None
    rows = 0
    for batch in batches:
        for r in batch.to_pylist():
            rows += 1
            try:
                yield event_from_dict(r)
            except _NOT_AN_EVENT as exc:
                raise EventFileError(f"{path}: row {rows}: not an event: {exc}") from None


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
