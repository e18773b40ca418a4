"""Training options side by side on event logs: `persona eval --events`'s mean probe AUCs
(embedding, aggregates, both) for the defaults and each variant, per log and seed, in one
run. The runs behind docs/benchmarks.md's issue #12 entries, as a command.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/train_variants.py \
        --log /tmp/instacart.jsonl --log /tmp/renamed.jsonl@1763900000001 --seeds 0 1 2 \
        --variant 'w8={"objectives": {"w_residual": 8.0}}' [--json OUT.jsonl]

A log is ``PATH`` or ``PATH@SPLIT`` (the held-out split in ms; default `default_split`, as
``persona train --split-at auto``). A variant is ``NAME=JSON``: fields of `TrainSpec`'s
parts (``train``, ``model``, ``objectives``, ``tokenizer``, ``spec_options``) set over the
defaults (a JSON list becomes a tuple where the default is one); every name is checked
before anything trains. The defaults always run too, with the same seeds, so each variant
is read beside its baseline from the same run. Each (log, seed, variant) trains on the
events before the split and is scored as `persona eval --models` scores such a version
(`encoder/evaluate_log.py`). Prints a line per run, then per log and variant the means over
the seeds of "embedding - aggregates" and "both - aggregates", and how far the latter moved
from the defaults'. About 3-6 minutes a run on 2 cores for the README's logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from encoder.api import Encoder
from encoder.evaluate_log import LogEvalConfig, auto_split, evaluate_log
from encoder.io import events_source
from encoder.train import TrainSpec, train

PARTS = ("train", "model", "objectives", "tokenizer", "spec_options")
DEFAULTS = "defaults"
Overrides = dict[str, dict[str, Any]]


def parse_variant(text: str) -> tuple[str, Overrides]:
    """``NAME=JSON`` -> (name, overrides); ValueError naming what is wrong (not NAME=JSON,
    not an object, a part or a field `TrainSpec` does not have)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"variant {text!r}: give NAME=JSON")
    if name == DEFAULTS:
        raise ValueError(f"variant {name!r}: the name of the baseline, which always runs")
    try:
        over = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"variant {name}: {exc}") from None
    if not isinstance(over, dict):
        raise ValueError(f'variant {name}: a JSON object of parts, e.g. {{"model": {{...}}}}')
    spec = TrainSpec()
    for part, values in over.items():
        if part not in PARTS:
            raise ValueError(f"variant {name}: {part!r} is not one of {', '.join(PARTS)}")
        if not isinstance(values, dict):
            raise ValueError(f"variant {name}: {part} takes an object of fields")
        known = {f.name for f in fields(getattr(spec, part))}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"variant {name}: {part} has no field {', '.join(unknown)}")
    return name, over


def spec_for(over: Overrides, seed: int) -> TrainSpec:
    """The defaults with `over` set, the seed given, no progress bar."""
    spec = TrainSpec()
    parts: dict[str, Any] = {p: getattr(spec, p) for p in PARTS}
    for part, values in over.items():
        old = parts[part]
        fixed = {
            k: tuple(v) if isinstance(v, list) and isinstance(getattr(old, k), tuple) else v
            for k, v in values.items()
        }
        parts[part] = replace(old, **fixed)
    parts["train"] = replace(parts["train"], seed=seed, progress=False)
    return replace(spec, **parts)


def parse_log(text: str) -> tuple[Path, int | None]:
    """``PATH`` or ``PATH@SPLIT`` -> (path, split or None)."""
    path, sep, split = text.rpartition("@")
    if not sep or not split.isdigit():
        return Path(text), None
    return Path(path), int(split)


def run_one(path: Path, split: int, spec: TrainSpec, repeats: int) -> dict[str, Any]:
    """Train on the events before `split`, score as `persona eval` does: the mean AUCs."""
    source = events_source(path)
    t0 = time.monotonic()
    model, tok, metrics, _, _ = train(source, spec, until_ms=split)
    cfg = replace(LogEvalConfig(), split_at=split, repeats=repeats)
    auc = evaluate_log(Encoder.from_model(model).encode_rows, tok, source, cfg)["mean_auc"]
    return {
        "embedding": auc["embedding"],
        "aggregates": auc["aggregates"],
        "both": auc["both"],
        "epoch_kept": metrics.get("epoch_kept"),
        "seconds": round(time.monotonic() - t0, 1),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (log, variant): seeds, mean "embedding - aggregates" and "both - aggregates", and
    the latter minus the defaults' over the seeds both ran (None without defaults)."""
    out = []
    keys = dict.fromkeys((r["log"], r["variant"]) for r in rows)
    for log, variant in keys:
        mine = {r["seed"]: r for r in rows if r["log"] == log and r["variant"] == variant}
        base = {r["seed"]: r for r in rows if r["log"] == log and r["variant"] == DEFAULTS}
        both = {s: r["both"] - r["aggregates"] for s, r in mine.items()}
        shared = sorted(set(mine) & set(base))
        moved = (
            float(np.mean([both[s] - (base[s]["both"] - base[s]["aggregates"]) for s in shared]))
            if shared and variant != DEFAULTS
            else None
        )
        out.append({
            "log": log,
            "variant": variant,
            "seeds": sorted(mine),
            "embedding_minus_aggregates": float(
                np.mean([r["embedding"] - r["aggregates"] for r in mine.values()])
            ),
            "both_minus_aggregates": [round(both[s], 4) for s in sorted(mine)],
            "both_minus_aggregates_mean": float(np.mean(list(both.values()))),
            "both_vs_defaults": moved,
        })  # fmt: skip
    return out


def print_summary(summary: list[dict[str, Any]]) -> None:
    print("| log | variant | seeds | embedding - aggregates | both - aggregates (each seed) "
          "| mean | mean - defaults' |")  # fmt: skip
    print("| --- | --- | --- | ---: | --- | ---: | ---: |")
    for s in summary:
        each = " / ".join(f"{d:+.4f}" for d in s["both_minus_aggregates"])
        moved = "" if s["both_vs_defaults"] is None else f"{s['both_vs_defaults']:+.4f}"
        print(f"| {s['log']} | {s['variant']} | {','.join(map(str, s['seeds']))} "
              f"| {s['embedding_minus_aggregates']:+.4f} | {each} "
              f"| {s['both_minus_aggregates_mean']:+.4f} | {moved} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--log", action="append", required=True, help="PATH or PATH@SPLIT_MS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variant", action="append", default=[], help="NAME=JSON (repeatable)")
    p.add_argument("--repeats", type=int, default=LogEvalConfig().repeats)
    p.add_argument("--json", type=Path, default=None, help="write every run here (JSON lines)")
    args = p.parse_args(argv)
    try:
        variants: list[tuple[str, Overrides]] = [(DEFAULTS, {})]
        variants += [parse_variant(v) for v in args.variant]
    except ValueError as exc:
        p.error(str(exc))
    if len({n for n, _ in variants}) != len(variants):
        p.error("two variants share a name")
    logs = []
    for text in args.log:
        path, split = parse_log(text)
        if not path.is_file():
            p.error(f"--log {text}: no such file")
        if split is None:
            try:
                split = auto_split(events_source(path))
            except ValueError as exc:
                p.error(f"--log {text}: {exc}")
        logs.append((path, split))
    rows: list[dict[str, Any]] = []
    for path, split in logs:
        for seed in args.seeds:
            for name, over in variants:
                row = {"log": path.name, "split_at_ms": split, "seed": seed, "variant": name,
                       **run_one(path, split, spec_for(over, seed), args.repeats)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json is not None:
                    with args.json.open("a") as f:
                        f.write(json.dumps({**row, "overrides": over}) + "\n")
    print_summary(summarise(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
