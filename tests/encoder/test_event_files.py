"""Event files that are not what `encoder/io.py` reads: every such line or row stops the
read with `EventFileError` naming it (no raw traceback, no silent drop, no value turned into
another), the CLI prints that one line and exits 2; the lenient cases (integer ids,
booleans, null / NaN values, integral float times, gzip) read as documented."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.events import Event
from encoder.eventlog import build_log
from encoder.features import discover
from encoder.io import MAX_ID_BYTES, EventFileError, iter_events
from encoder.tokenizer import Tokenizer, TokenizerConfig
from services.cli import main

TS = 1_700_000_000_000
GOOD = {"user_id": "u1", "event_id": "e1", "ts_ms": TS, "type": "view"}


def _file(tmp_path: Path, second: str, name: str = "e.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(GOOD) + "\n" + second + "\n")
    return path


def _with(**fields: object) -> str:
    return json.dumps({**GOOD, "event_id": "e2", **fields})


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[1, 2]", "an event is a JSON object"),
        ("7", "an event is a JSON object"),
        (_with(user_id=None), "no user_id"),
        (_with(user_id=""), "user_id must be a non-empty string"),
        (_with(user_id={"a": 1}), "user_id must be a non-empty string"),
        (_with(user_id=1.5), "user_id must be a non-empty string"),
        (_with(event_id=True), "event_id must be a non-empty string"),
        (_with(user_id="u" * (MAX_ID_BYTES + 1)), "user_id is 257 bytes long"),
        (_with(event_id="e" * 1_000_000), "event_id is 1000000 bytes long"),
        (_with(type=5), "type must be a non-empty string"),
        (_with(ts_ms=True), "ts_ms must be an integer"),
        (_with(ts_ms="17e11"), "ts_ms must be an integer"),
        (_with(ts_ms=-1), "outside [0,"),
        (_with(ts_ms=10**30), "outside [0,"),
        (_with(ts_ms=None), "no ts_ms"),
        (_with().replace('"ts_ms": 1700000000000', '"ts_ms": Infinity'), "ts_ms must be"),
        (_with().replace('"ts_ms": 1700000000000', '"ts_ms": 1e400'), "ts_ms must be"),
        (_with(props=5), "props must be an object"),
        (_with(props=True), "props must be an object"),
        (_with(props=[1, 2]), "not an event"),
        (_with(props={"a": {"b": 1}}), "property 'a' is a dict"),
        (_with(props={"a": [1]}), "property 'a' is a list"),
        (_with(props={"": "x"}), "a property name must be a non-empty string"),
        (_with(props={"a": 10**400}), "property 'a' is outside the float range"),
        (_with().replace('"type": "view"', '"type": "view", "props": {"a": Infinity}'), "infinite"),
        (_with(user_id="\ud800"), "not valid Unicode"),
        (_with(props={"\ud800": 1}), "not valid Unicode"),
        (_with(props={"a": "\udfff"}), "not valid Unicode"),
        ("{not json", "not an event"),
    ],
)
def test_a_line_that_is_not_an_event_is_named(tmp_path: Path, line: str, says: str) -> None:
    path = _file(tmp_path, line)
    with pytest.raises(EventFileError, match="line 2") as info:
        list(iter_events(path))
    assert says in str(info.value) and str(path) in str(info.value)


def test_lenient_values_read_as_documented(tmp_path: Path) -> None:
    lines = [
        {**GOOD, "user_id": 42, "event_id": 7, "ts_ms": 1.7e12 + 0.75},
        {**GOOD, "event_id": "s", "ts_ms": " 1700000000000"},  # BigQuery's INT64 as text
        {**GOOD, "props": {"member": True, "gone": None, "n": float("nan"), "k": "x"}},
    ]
    path = tmp_path / "e.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in lines)
    assert list(iter_events(path)) == [
        Event("42", "7", 1_700_000_000_000, "view"),
        Event("u1", "s", 1_700_000_000_000, "view"),
        Event("u1", "e1", TS, "view", {"member": 1.0, "k": "x"}),
    ]


def test_unreadable_files_are_named_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="no such file"):
        list(iter_events(tmp_path / "missing.jsonl"))
    binary = tmp_path / "e.jsonl"  # a gzip file without its suffix: not UTF-8 text
    binary.write_bytes(gzip.compress(b'{"user_id": "u"}\n' * 50))
    with pytest.raises(EventFileError, match="line 1: not an event"):
        list(iter_events(binary))
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress((json.dumps(GOOD) + "\n").encode() * 500)[:60])
    with pytest.raises(EventFileError, match=r"cannot read|truncated"):
        list(iter_events(truncated))
    fake = tmp_path / "e.parquet"
    fake.write_text(json.dumps(GOOD))
    with pytest.raises(EventFileError, match="not a Parquet file"):
        list(iter_events(fake))


def test_parquet_rows_are_checked_as_lines_are(tmp_path: Path) -> None:
    rows = [dict(GOOD, user_id=b"u9", props=json.dumps({"a": 1})), dict(GOOD, user_id=None)]
    path = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(EventFileError, match="row 2: not an event: no user_id"):
        list(iter_events(path))
    pq.write_table(pa.Table.from_pylist(rows[:1]), path)
    assert [e.user_id for e in iter_events(path)] == ["u9"]
    # a DECIMAL column (prices, as warehouses export them) comes back as Decimal: a number
    priced = pa.table({"user_id": ["u1"], "event_id": ["e1"], "ts_ms": [TS], "type": ["buy"],
                       "props": pa.array([{"price": Decimal("9.99")}],
                                         pa.struct([("price", pa.decimal128(5, 2))]))})  # fmt: skip
    pq.write_table(priced, path)
    assert [e.props for e in iter_events(path)] == [{"price": 9.99}]


def test_numbers_near_the_float_limit_keep_finite_bins() -> None:
    events = [
        Event(f"u{i % 5}", f"e{i}", 1_700_000_000_000 + i, "t", {"x": v})
        for i, v in enumerate([1.5e308, 1.7e308] * 20)
    ]
    spec = discover(events)
    (edges,) = [c.edges for c in spec.numeric if c.name == "x"]
    assert edges and all(abs(e) < float("inf") for e in edges)
    assert build_log(events, Tokenizer(TokenizerConfig(features=spec))).n_events == 40


def test_the_cli_prints_the_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = _file(tmp_path, _with(props=5))
    argv = ["train", "--events", str(path), "--models", str(tmp_path / "m"), "--quiet"]
    assert main([*argv, "--split-at", "auto"]) == 2
    err = capsys.readouterr().err
    assert "line 2: not an event: props must be an object" in err and "Traceback" not in err
    argv[2] = str(tmp_path / "none.jsonl")
    assert main([*argv, "--split-at", "none"]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err + caplog.text  # printed or logged
