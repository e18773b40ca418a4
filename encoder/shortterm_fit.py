"""Training the short-term head (`encoder/shortterm.py`) on a trained encoder's own outputs.

Examples come from the tokenized training log: a user, a window end (row ``hi``) and a count
n of new events. The nearline vector is the encoder's vector of the window cut before those
n events, encoded at a time between the last event it holds and the first new one (when a
refresher would have written it); the target is the vector of the whole window, encoded
at its newest event (what the next refresh writes). The head learns the difference from
the nearline vector and the n events alone; the encoder stays frozen. Users are split into
fitting and validation users; the epoch with the lowest validation error is kept, and the
report says what share of the refresh's change the head recovers on validation examples
(``1 - |delta - change|^2 / |change|^2``, overall and by n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.events import Event
from encoder.eventlog import EventLog, ranges
from encoder.model import UserEncoder
from encoder.shortterm import HeadArrays, parity_lines, rank_slots
from encoder.tokenizer import Tokenizer

MIN_EXAMPLES = 1000


@dataclass(frozen=True)
class ShortTermConfig:
    hidden: int = 64
    rank_slots: int = 8  # weights by place from the newest new event; the last is shared
    max_new: int = 16  # new events per example: 1 .. max_new
    examples: int = 8000  # at most (a log of fewer than 16,000 events: half its events)
    val_share: float = 0.15  # of the users
    epochs: int = 60  # at most: stops after `patience` epochs without a better validation
    patience: int = 8
    batch_size: int = 256
    lr: float = 3e-3
    parity_n: int = 32


class _Head(nn.Module):
    def __init__(self, d: int, e: int, h: int, r: int) -> None:
        super().__init__()
        self.w1e = nn.Linear(d, h, bias=False)
        self.w_rank = nn.Parameter(torch.ones(r))
        self.w1z = nn.Linear(e, h)
        self.w1n = nn.Parameter(torch.zeros(h))
        self.w2 = nn.Linear(h, e)
        nn.init.zeros_(self.w2.weight)
        nn.init.zeros_(self.w2.bias)

    def forward(self, z: torch.Tensor, slots: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """z (B, E), slots (B, R, D) raw rows summed per rank slot, n (B,) -> delta (B, E)."""
        s = self.w1e((self.w_rank[None, :, None] * slots).sum(1))
        hidden = torch.relu(s + self.w1z(z) + torch.log1p(n)[:, None] * self.w1n)
        return self.w2(hidden) * (n > 0)[:, None]


@dataclass
class Fit:
    arrays: HeadArrays
    report: dict[str, Any]
    parity: str  # `shortterm.PARITY_FILE` text


def _tables(model: UserEncoder) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's static input tables stacked (rows, D) and each key's first row."""
    names = model.tok.static_names
    tabs = [model.ec.embeddings[f"t_{k}"].weight.detach().float().numpy() for k in names]
    offsets = np.concatenate([[0], np.cumsum([t.shape[0] for t in tabs])[:-1]]).astype(np.int64)
    return np.concatenate(tabs), offsets


def _slots(raw: np.ndarray, lengths: np.ndarray, r: int) -> np.ndarray:
    """(B, R, D): each user's new events' raw rows (N, D) summed per rank slot."""
    b = len(lengths)
    owner = np.repeat(np.arange(b), lengths)
    out = np.zeros((b, r, raw.shape[1]), dtype=np.float32)
    np.add.at(out, (owner, rank_slots(lengths, r)), raw)
    return out


@torch.no_grad()
def _encode(model: UserEncoder, evlog: EventLog, tok: Tokenizer, lo: Any, hi: Any, now: Any) -> Any:
    out = []
    for i in range(0, len(lo), 256):
        sl = slice(i, i + 256)
        out.append(model.encode_batch(evlog.token_batch(lo[sl], hi[sl], now[sl], tok)).numpy())
    return np.concatenate(out).astype(np.float32)


def _examples(
    evlog: EventLog, users: np.ndarray, cfg: ShortTermConfig, n: int, max_events: int,
    window_ms: int | None, rng: np.random.Generator,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Sampled (user, window end, new events) examples and their two windows' rows/times."""
    lens = evlog.lengths()[users]
    ok = users[lens >= 2]
    if not len(ok):
        return {}
    u = rng.choice(ok, size=n)
    off, ln = evlog.offsets[u], evlog.lengths()[u]
    hi = off + 2 + (rng.random(n) * (ln - 1)).astype(np.int64)  # fresh window end in [2, len]
    k = 1 + (rng.random(n) * np.minimum(cfg.max_new, hi - off - 1)).astype(np.int64)
    mid = hi - k  # the stale window ends before row `mid`
    ts = evlog.ts
    now_f = ts[hi - 1]
    now_s = ts[mid - 1] + (rng.random(n) * (ts[mid] - ts[mid - 1])).astype(np.int64)

    def lo_at(end: np.ndarray) -> np.ndarray:
        return evlog.window_start(u, end, max_events, window_ms)

    return {
        "lo_s": lo_at(mid), "mid": mid, "now_s": now_s,
        "lo_f": lo_at(hi), "hi": hi, "now_f": now_f, "k": k,
    }  # fmt: skip


def fit(
    model: UserEncoder,
    evlog: EventLog,
    tok: Tokenizer,
    cfg: ShortTermConfig = ShortTermConfig(),
    seed: int = 0,
    window_ms: int | None = None,
) -> Fit | None:
    """Fit the head on `model`'s outputs over `evlog` (None: no user has two events)."""
    rng = np.random.default_rng(seed + 17)
    torch.manual_seed(seed + 17)
    model.eval()
    m = tok.config.max_events
    perm = rng.permutation(len(evlog.users))
    n_val = max(1, round(cfg.val_share * len(perm))) if len(perm) > 1 else 0
    parts = {"val": np.sort(perm[:n_val]), "fit": np.sort(perm[n_val:])}
    total = min(cfg.examples, max(MIN_EXAMPLES, evlog.n_events // 2))  # small logs: fewer
    n_val_ex = max(1, round(total * cfg.val_share))
    sizes = {"fit": total - n_val_ex, "val": n_val_ex}
    table, offsets = _tables(model)
    data: dict[str, tuple[torch.Tensor, ...]] = {}
    for name, users in parts.items():
        ex = _examples(evlog, users, cfg, sizes[name], m, window_ms, rng)
        if not ex:
            return None
        z_s = _encode(model, evlog, tok, ex["lo_s"], ex["mid"], ex["now_s"])
        z_f = _encode(model, evlog, tok, ex["lo_f"], ex["hi"], ex["now_f"])
        rows = ranges(ex["mid"], ex["hi"])
        raw = table[evlog.static[rows] + offsets].sum(1)  # (N, D)
        slots = _slots(raw, ex["k"], cfg.rank_slots)
        data[name] = tuple(
            torch.from_numpy(np.ascontiguousarray(x))
            for x in (z_s, slots, ex["k"].astype(np.float32), z_f - z_s)
        )
    head = _Head(table.shape[1], model.cfg.out_dim, cfg.hidden, cfg.rank_slots)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    z, sl, n, change = data["fit"]
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(cfg.epochs):
        head.train()
        order = torch.randperm(len(z))
        for i in range(0, len(z), cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            loss = ((head(z[b], sl[b], n[b]) - change[b]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        err = _errors(head, data["val"])
        if best is None or err[0] < best[0]:
            best = (err[0], epoch, {k: v.detach().clone() for k, v in head.state_dict().items()})
        elif epoch - best[1] >= cfg.patience:
            break
    assert best is not None
    head.load_state_dict(best[2])
    head.eval()
    arrays = _arrays(head, table, offsets, m)
    _, shares = _errors(head, data["val"])
    report = {
        "examples": sizes,
        "epoch_kept": best[1] + 1,
        "epochs_run": epoch + 1,
        "explained_share": shares,
        "note": "share of the change a refresh makes that the head recovers, validation users",
    }
    return Fit(arrays, report, _parity(model, tok, head, table, offsets, evlog.raw, cfg))


@torch.no_grad()
def _errors(head: _Head, val: tuple[torch.Tensor, ...]) -> tuple[float, dict[str, float]]:
    """Validation mean squared error and the explained share, overall and by new events."""
    z, sl, n, change = val
    head.eval()
    err = ((head(z, sl, n) - change) ** 2).sum(1)
    tot = (change**2).sum(1)
    shares = {"all": float(1 - err.sum() / tot.sum().clamp(min=1e-12))}
    for name, lo, hi in (("1", 1, 1), ("2-3", 2, 3), ("4-16", 4, 16)):
        sel = (n >= lo) & (n <= hi)
        if sel.any():
            shares[name] = float(1 - err[sel].sum() / tot[sel].sum().clamp(min=1e-12))
    return float(err.mean()), {k: round(v, 4) for k, v in shares.items()}


@torch.no_grad()
def _arrays(head: _Head, table: np.ndarray, offsets: np.ndarray, max_events: int) -> HeadArrays:
    w1e = head.w1e.weight.numpy()  # (H, D)

    def f(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().numpy().astype(np.float32)

    return HeadArrays(
        q=(table @ w1e.T).astype(np.float32), offsets=offsets, w_rank=f(head.w_rank),
        w1z=f(head.w1z.weight), w1n=f(head.w1n), b1=f(head.w1z.bias),
        w2=f(head.w2.weight), b2=f(head.w2.bias), max_events=max_events,
    )  # fmt: skip


@torch.no_grad()
def _parity(
    model: UserEncoder, tok: Tokenizer, head: _Head, table: np.ndarray, offsets: np.ndarray,
    raw_users: dict[str, list[Event]], cfg: ShortTermConfig,
) -> str:  # fmt: skip
    """Parity cases from the log's kept users: each window's newest k events as new ones."""
    zs: list[np.ndarray] = []
    news: list[Sequence[Event]] = []
    deltas: list[np.ndarray] = []
    users = [u for u in sorted(raw_users) if len(raw_users[u]) >= 2][: cfg.parity_n]
    for i, user in enumerate(users):
        ev = raw_users[user]
        k = 1 + i % min(cfg.max_new, len(ev) - 1)
        stale, new = ev[:-k], ev[-k:]
        z = model.encode_batch(tok.encode([stale], new[0].ts_ms)).float()  # (1, E)
        lengths = np.asarray([k])
        raw = table[tok.static_matrix(new) + offsets].sum(1)
        slots = torch.from_numpy(_slots(raw, lengths, cfg.rank_slots))
        d = head(z, slots, torch.tensor([float(k)]))
        zs.append(z[0].numpy())
        news.append(new)
        deltas.append(d[0].numpy())
    if not zs:
        return ""
    return parity_lines(np.stack(zs), news, np.stack(deltas))
