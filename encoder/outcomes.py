"""The outcome space: what "happens within a horizon" means for any schema.

Outcomes are derived from the feature spec, never named in code:

- ``(any)``: any event at all (its absence over two weeks is churn);
- ``type=<t>`` for the most frequent event types;
- ``<property>=<value>`` for the most frequent values of each categorical property (for a
  bool property only ``=1``).

Each outcome belongs to a group (any, types, one per property). Training weighs groups
equally, so a schema with many properties does not drown out ``(any)`` and the types.

Example: spec ``types=(view, buy)``, ``sku`` with vocab ``(a1, a2, a3)``, ``member`` bool, and
``top_values=2`` give ``[(any), type=view, type=buy, sku=a1, sku=a2, member=1]``; an event
``buy(sku=a3, member=1)`` carries outcomes ``{0, 2, 5}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encoder.features import FeatureSpec


@dataclass(frozen=True)
class OutcomeSpace:
    """Outcome names, their groups and per-slot lookup tables from static ids.

    Attributes:
        names: (Y,) outcome names.
        groups: (Y,) group index of each outcome.
        luts: one table per static slot (type, then each categorical; numeric slots have
            none): ``luts[s][id]`` is the outcome index of that id, or -1.
        slots: the static columns the tables apply to.
    """

    names: tuple[str, ...]
    groups: np.ndarray
    luts: tuple[np.ndarray, ...]
    slots: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.names)

    @classmethod
    def from_spec(
        cls, spec: FeatureSpec, top_types: int = 32, top_values: int = 16
    ) -> OutcomeSpace:
        names = ["(any)"]
        groups = [0]
        luts: list[np.ndarray] = []
        slots: list[int] = []
        types = spec.event_types[:top_types]
        lut = np.full(len(spec.event_types) + 2, -1, dtype=np.int64)
        for i, t in enumerate(types):
            lut[i + 2] = len(names)
            names.append(f"type={t}")
            groups.append(1)
        luts.append(lut)
        slots.append(0)
        for c, cat in enumerate(spec.categorical):
            lut = np.full(cat.rows, -1, dtype=np.int64)
            values = ("1",) if cat.kind == "bool" else cat.vocab[:top_values]
            for v in values:
                if v not in cat.vocab:
                    continue
                lut[1 + cat.vocab.index(v)] = len(names)
                names.append(f"{cat.name}={v}")
                groups.append(2 + c)
            if (lut >= 0).any():
                luts.append(lut)
                slots.append(1 + c)
        return cls(tuple(names), np.asarray(groups), tuple(luts), tuple(slots))

    def labels(self, static: np.ndarray) -> np.ndarray:
        """(N, S) static ids -> (N, 1 + slots) outcome indices (-1: none); column 0 is
        ``(any)`` for every event."""
        out = np.full((static.shape[0], 1 + len(self.slots)), -1, dtype=np.int64)
        out[:, 0] = 0
        for k, (slot, lut) in enumerate(zip(self.slots, self.luts, strict=True)):
            ids = static[:, slot]
            out[:, 1 + k] = lut[np.clip(ids, 0, len(lut) - 1)]
        return out

    def weights(self) -> np.ndarray:
        """(Y,) float32 per-outcome loss weights: each group gets the same total, summing
        to 1 over all outcomes."""
        g = self.groups
        counts = np.bincount(g)
        n_groups = int((counts > 0).sum())
        return (1.0 / (n_groups * counts[g])).astype(np.float32)


def occurred(labels: np.ndarray, starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """Which outcomes occur in rows ``starts[i]:ends[i]`` of a sequence.

    Args:
        labels: (S, C) outcome indices per row (-1: none).
        starts, ends: (Q,) row bounds into the sequence.
    Returns:
        (Q, size) bool.
    """
    s = labels.shape[0]
    counts = np.zeros((s + 1, size), dtype=np.int32)
    rows, cols = np.nonzero(labels >= 0)
    np.add.at(counts, (rows + 1, labels[rows, cols]), 1)
    np.cumsum(counts, axis=0, out=counts)
    return (counts[ends] - counts[starts]) > 0
