"""The short-term head (issue #17): what the events since the last refresh add to a vector.

A served vector is as old as the refresh pass that wrote it. The head closes the gap at
request time, without the Transformer: serving reads, in the same store round trip as the
vector, the window's events after the newest event the vector saw (the marker), and adds

    delta = W2 relu(sum_i w[rank_i] u_i + W1z z + w1n log1p(n) + b1) + b2     (0 if n = 0)
    combined = z + delta

z the nearline vector (E), n the new events (at most `max_events`, the newest), u_i the
event's row ``sum_k Q_k[id_ik]`` over its static token ids (type, categorical and numeric
bins: the tokenizer of the version), rank_i its place from the newest (0 = newest; ranks past
the last weight share it). ``Q_k = table_k @ W1e^T`` is the encoder's own (frozen) input
table of feature k times the head's first layer, so the head needs no tables of its own and
none of torch: numpy, a gather and two small matrix products per request.

It is trained after the encoder, in the same run, to predict what a refresh would write:
from the vector of a window cut n events earlier (encoded between those events, as a
refresher would have) and those n events, the vector of the whole window (distillation,
`encoder/shortterm_fit.py`). Saved in the version (``shortterm.npz``) with its own parity
sample (``shortterm_parity.jsonl``: nearline vector, new events, the delta the trained torch
module gave); `ShortTermHead.load` refuses a head that does not reproduce it. Beside it,
``shortterm_rows_parity.jsonl``: the same cases as the head's input rows (`event_rows` of the
kept events, oldest first) and the delta `delta_rows` gives them, for readers of the
short-term state without the tokenizer (the Go front checks its head against it).

Example: a user whose vector was written before they opened three ``sku=b2`` pages gets
``z + delta(z, [3 events])``; with no event since the refresh the combined vector is ``z``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.events import Event
from encoder.propensity import OutcomeHeads
from encoder.registry import check_name, event_from_json
from encoder.tokenizer import Tokenizer, TokenizerConfig

FILE = "shortterm.npz"
PARITY_FILE = "shortterm_parity.jsonl"
# the same sample as the head's input rows: what a reader of the state (the Go front) checks
ROWS_PARITY_FILE = "shortterm_rows_parity.jsonl"
PARITY_TOL = 1e-4


class ShortTermParityError(RuntimeError):
    """The numpy head does not reproduce the outputs the trained head gave."""


@dataclass(frozen=True)
class HeadArrays:
    """The head's parameters (float32): Q (rows of all static keys, H) with per-key row
    offsets, rank weights (R,), W1z (H, E), w1n (H,), b1 (H,), W2 (E, H), b2 (E,)."""

    q: np.ndarray
    offsets: np.ndarray
    w_rank: np.ndarray
    w1z: np.ndarray
    w1n: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    max_events: int

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            q=self.q, offsets=self.offsets, w_rank=self.w_rank, w1z=self.w1z, w1n=self.w1n,
            b1=self.b1, w2=self.w2, b2=self.b2, max_events=np.int64(self.max_events),
        )  # fmt: skip
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> HeadArrays:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            f = {k: np.asarray(z[k]) for k in z.files}
        return cls(
            **{k: v.astype(np.float32) for k, v in f.items() if k not in ("offsets", "max_events")},
            offsets=f["offsets"].astype(np.int64),
            max_events=int(f["max_events"]),
        )


def rank_slots(lengths: np.ndarray, n_slots: int) -> np.ndarray:
    """(N,) each event's weight slot: its place from its user's newest event (0 = newest),
    places past the last slot sharing it. lengths: (B,) events per user, users in order."""
    ends = np.repeat(np.cumsum(lengths), lengths)  # (N,) one past each event's user's last
    return np.minimum(ends - 1 - np.arange(int(lengths.sum())), n_slots - 1)


class ShortTermHead:
    """A version's short-term head, ready for serving (see the module docstring)."""

    def __init__(
        self, arrays: HeadArrays, tokenizer: Tokenizer, outcomes: OutcomeHeads | None = None
    ) -> None:
        self.a = arrays
        self.tokenizer = tokenizer
        self.outcomes = outcomes  # the version's outcome heads: scores of a combined vector
        self.out_dim = int(arrays.w2.shape[0])
        self.max_events = arrays.max_events

    @classmethod
    def read(cls, models_dir: Path, version: str) -> ShortTermHead | None:
        """The head of `version` as stored (None: a version trained without one), unchecked."""
        folder = Path(models_dir) / check_name(version)
        if not (folder / FILE).exists():
            return None
        tok = Tokenizer(TokenizerConfig.from_json((folder / "tokenizer.json").read_text()))
        heads = folder / "outcomes.json"
        outcomes = OutcomeHeads.from_json(heads.read_text()) if heads.exists() else None
        return cls(HeadArrays.from_bytes((folder / FILE).read_bytes()), tok, outcomes)

    @classmethod
    def load(cls, models_dir: Path, version: str) -> ShortTermHead | None:
        """`read`, checked against the version's parity sample (ShortTermParityError when
        the head does not reproduce it)."""
        head = cls.read(models_dir, version)
        if head is None:
            return None
        worst = head.parity_error(Path(models_dir) / version / PARITY_FILE)
        if worst > PARITY_TOL:
            raise ShortTermParityError(
                f"model version {version}: short-term head parity failed "
                f"(max |diff| {worst:.3g} > {PARITY_TOL})"
            )
        return head

    def parity_error(self, path: Path) -> float:
        """Largest |delta - expected| over the parity sample at `path`, relative to the
        largest vector component (at least 1): float32 sums taken in another order."""
        cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not cases:
            return 0.0
        z = np.asarray([c["nearline"] for c in cases], dtype=np.float32)
        events = [[event_from_json(e) for e in c["events"]] for c in cases]
        want = np.asarray([c["delta"] for c in cases], dtype=np.float32)
        scale = max(1.0, float(np.abs(want).max()), float(np.abs(z).max()))
        return float(np.abs(self.delta(z, events) - want).max()) / scale

    def scores(self, z: np.ndarray) -> np.ndarray | None:
        """(B, E) combined vectors -> (B, S) calibrated probabilities of the version's served
        score columns (`OutcomeHeads.scores`, the refresher's order); None without heads."""
        return None if self.outcomes is None else self.outcomes.scores(z).astype(np.float32)

    def delta(self, nearline: np.ndarray, events: Sequence[Sequence[Event]]) -> np.ndarray:
        """(B, E) nearline vectors and each user's events after the marker (window order)
        -> (B, E) float32 short-term part; zero rows for users without new events."""
        m = self.max_events
        kept = [w[-m:] if len(w) > m else w for w in events]
        lengths = np.fromiter((len(w) for w in kept), np.int64, len(kept))
        rows = self.event_rows([e for w in kept for e in w])
        return self.delta_rows(np.asarray(nearline, dtype=np.float32), rows, lengths)

    @property
    def row_dim(self) -> int:
        """H: the length of an event's row (`event_rows`)."""
        return int(self.a.q.shape[1])

    def event_rows(self, events: Sequence[Event]) -> np.ndarray:
        """(N, H) float32: each event's row u = sum_k Q_k[id_k], the head's input. Depends on
        the event alone (not on its user's other events), so ingest computes it once per
        event and version and stores it beside the window (the short-term state, LAYOUT.md);
        `delta_rows` over stored rows gives what `delta` gives over the events."""
        if not events:
            return np.zeros((0, self.row_dim), dtype=np.float32)
        return self.ids_rows(self.tokenizer.static_matrix(list(events)))

    def ids_rows(self, ids: np.ndarray) -> np.ndarray:
        """`event_rows` from static ids (N, S): the sum over the S keys in key order, one
        (N, H) gather per key (the same floats as ``q[ids + offsets].sum(1)``, without its
        (N, S, H) temporary: ~3x faster at ingest's batch sizes)."""
        idx = np.ascontiguousarray((ids + self.a.offsets).T)
        if not len(idx):
            return np.zeros((ids.shape[0], self.row_dim), dtype=np.float32)
        out = np.take(self.a.q, idx[0], axis=0)
        for k in range(1, len(idx)):
            out += np.take(self.a.q, idx[k], axis=0)
        return out

    def delta_rows(self, z: np.ndarray, u: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """`delta` from the rows (N, H) of the users' new events (`event_rows`, each user's
        oldest first), `lengths` (B,) each (at most `max_events`)."""
        a = self.a
        out = np.zeros((len(lengths), self.out_dim), dtype=np.float32)
        some = lengths > 0
        if not some.any():
            return out
        # the users with events only (a float32 matmul's result may depend on its row
        # count), their rank-weighted sums over a (B', L, H) padding: a batched mat-vec
        # (few numpy calls; np.add.reduceat costs ~1 us a user)
        part = lengths[some]
        b, n = len(part), int(part.sum())
        owner = np.repeat(np.arange(b), part)
        place = np.arange(n) - np.repeat(np.cumsum(part) - part, part)
        w = np.zeros((b, int(part.max())), dtype=np.float32)
        w[owner, place] = a.w_rank[rank_slots(part, len(a.w_rank))]
        padded = np.zeros((*w.shape, u.shape[1]), dtype=np.float32)
        padded[owner, place] = u
        s = np.einsum("bl,blh->bh", w, padded)  # (B', H)
        n_log = np.log1p(part.astype(np.float32))[:, None]
        hidden = np.maximum(s + z[some] @ a.w1z.T + n_log * a.w1n + a.b1, 0.0)
        out[some] = hidden @ a.w2.T + a.b2
        return out


def parity_lines(z: np.ndarray, events: Sequence[Sequence[Event]], delta: np.ndarray) -> str:
    """The parity sample as JSON lines (nearline vector, new events, expected delta)."""
    rows: list[dict[str, Any]] = [
        {
            "nearline": [float(x) for x in zi],
            "events": [e.to_json_dict() for e in ev],
            "delta": [float(x) for x in di],
        }
        for zi, ev, di in zip(z, events, delta, strict=True)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def rows_parity_lines(head: ShortTermHead, parity: str) -> str:
    """The rows parity sample (`ROWS_PARITY_FILE`) of a parity sample's text (`parity_lines`):
    per case, the nearline vector, the rows of its new events as the head keeps them (the
    newest `max_events`, oldest first) and `delta_rows` of them, one case at a time."""
    out = []
    for line in parity.splitlines():
        if not line.strip():
            continue
        case = json.loads(line)
        z = np.asarray([case["nearline"]], dtype=np.float32)
        events = [event_from_json(e) for e in case["events"]]
        m = head.max_events
        kept = events[-m:] if len(events) > m else events
        rows = head.event_rows(kept)
        delta = head.delta_rows(z, rows, np.asarray([len(kept)], np.int64))
        out.append(json.dumps({
            "nearline": [float(x) for x in z[0]],
            "rows": [[float(x) for x in r] for r in rows],
            "delta": [float(x) for x in delta[0]],
        }) + "\n")  # fmt: skip
    return "".join(out)
