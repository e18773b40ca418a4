"""`services/index/rows.RowTable`'s id -> row lookup (sorted hashes, no Python object per
user), pure logic: correct with ids whose hashes clash, through inserts, lookups, removals
and re-inserts, against a dict doing the same."""

from __future__ import annotations

import random

import numpy as np

from services.index.rows import RowTable


def test_lookup_matches_a_dict_also_when_hashes_clash() -> None:
    rng = random.Random(7)
    # a hasher with few values: most ids share their hash with others (64-bit hash() does
    # so about once in 10^11 pairs; the clash path must still give each id its own row)
    table = RowTable(4, False, hasher=lambda u: len(u) % 5)
    want: dict[str, int] = {}
    pool = [f"u{i}" * rng.randint(1, 3) for i in range(300)]
    pool = list(dict.fromkeys(pool))
    for step in range(40):
        add = [u for u in rng.sample(pool, 25) if u not in want]
        rows = table.assign(add)
        want.update(zip(add, rows.tolist(), strict=True))
        gone = [*rng.sample(sorted(want), min(len(want), 10)), "nobody"]
        freed = table.forget(gone)
        assert sorted(freed) == sorted(want.pop(u) for u in gone if u in want)
        table.release(freed, reuse_now=step % 2 == 0)
        assert len(table) == len(want)
        probe = [*pool[:150], "nobody", "u1u1u1u1"]
        got = table.find(probe)
        assert got.tolist() == [want.get(u, -1) for u in probe]
        assert [table.get(u) for u in probe] == [want.get(u) for u in probe]
    assert len(set(want.values())) == len(want), "every held id its own row"
    assert table.bytes()["ids"] > 0


def test_lookup_with_the_real_hash() -> None:
    table = RowTable(4, False)
    ids = [f"user-{i}" for i in range(5000)] + ["é", "𝄞 clef"]
    rows = table.assign(ids)
    np.testing.assert_array_equal(table.find(ids), rows)
    assert table.find(["user-5000", ""]).tolist() == [-1, -1]
    assert table.get("é") == int(rows[-2]) and table.get("nobody") is None
    assert table.forget(["user-1", "user-1x"]) == [int(rows[1])]
    assert table.get("user-1") is None and len(table) == len(ids) - 1
    assert table.get("\ud800") is None and table.find(["\ud800"]).tolist() == [-1], "never held"
