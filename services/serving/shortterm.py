"""The short-term head at request time (issue #17): what the events since the last refresh
add to a served vector.

Each model version may carry a head (`encoder.shortterm.ShortTermHead`, trained and saved
with the encoder). `RegistryHeads` (services/common/heads.py) loads a version's head from
the registry once, checks it against its parity sample there, and keeps it: the head is per
version, so a response read under one version gets that version's head, and a cutover
switches head and vectors together. `fold` adds the head's output for the users with events
after their vector's marker (LAYOUT.md, vector layout 3; read in the same store round trip
as the vectors, `VectorStore.read_recent`: their rows from the short-term state ingest
keeps, or the events themselves).

Example: a user whose stored vector z folded in events up to (ts 100, "e7"), and who has
since had events e8, e9: the combined row is z + head.delta(z, [[e8, e9]]), its
`head_events` 2 and `newest_event_ms` e9's time; with no event since, the row is z and its
newest event is the marker's.
"""

from __future__ import annotations

from typing import Literal

from services.common.heads import Head, HeadSource, RegistryHeads
from services.store.folding import Folded, fold

__all__ = ["PARTS", "Folded", "Head", "HeadSource", "Part", "RegistryHeads", "fold"]

Part = Literal["default", "nearline", "short_term", "combined"]
PARTS: tuple[Part, ...] = ("default", "nearline", "short_term", "combined")
