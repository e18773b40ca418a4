"""What a rebuild of the lookalike index records and reports (`ann.LookalikeIndex.rebuild`).

A rebuild builds from a snapshot without holding the index's lock; the writes made meanwhile
go to the live structure and into a `Journal`, which `replay` applies to the new structure
under the exclusive lock, just before the swap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.index._built import BuiltIndex
from services.index.config import IndexKind
from services.index.rows import RowTable


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What a `rebuild()` produced: for approximate kinds, the search setting chosen for each
    calibrated k (`params`: nprobe or efSearch) and the recall@k measured with it.

    `serving_s`: seconds from the start until the new structure served (with the setting
    measured on the first, small sample); `seconds`: until the full sample's setting was
    installed. `kmeans_iterations`: IVF only (`kmeans.py`)."""

    kind: IndexKind
    size: int
    seconds: float
    on_gpu: bool
    params: dict[int, int] = field(default_factory=dict)
    recall: dict[int, float] = field(default_factory=dict)
    serving_s: float = 0.0
    kmeans_iterations: int = 0


@dataclass(slots=True)
class Journal:
    """Rows retired and added while a rebuild was building, and rows it will free."""

    removable: bool  # whether the structure being built can remove ids
    releasing: list[int]
    retired: list[np.ndarray] = field(default_factory=list)
    added: list[np.ndarray] = field(default_factory=list)


def replay(
    new: BuiltIndex, journal: Journal, snapshot_rows: np.ndarray, rows: RowTable, old: BuiltIndex
) -> None:
    """Applies to `new` (built from snapshot_rows) the writes recorded during the build,
    reading the added vectors back from `old`, the structure that took them."""
    if journal.retired:
        retired = np.unique(np.concatenate(journal.retired))
        new.remove(retired[np.isin(retired, snapshot_rows)])
    if journal.added:
        added = np.unique(np.concatenate(journal.added))
        live = added[rows.live(added)]
        new.add(old.reconstruct(live), live)
