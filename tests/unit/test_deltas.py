"""`services/store/deltas.py` pure logic: the delta value packed and parsed, and when a
stored value answers (LAYOUT.md "Short-term delta")."""

from __future__ import annotations

import numpy as np

from services.store import layout
from services.store.deltas import delta_batch, pack_deltas


def test_a_value_answers_only_for_the_vector_and_window_it_was_computed_on() -> None:
    d = np.arange(8, dtype=np.float32).reshape(2, 4)
    values = pack_deltas(np.array([5, 7]), np.array([9, 8]), np.array([111, 222]),
                         np.array([3, 1]), d)  # fmt: skip
    assert [len(v) for v in values] == [layout.DELTA_HEAD.size + 16] * 2
    assert layout.DELTA_HEAD.unpack_from(values[0]) == (5, 9, 111, 3, 4)
    blobs = [values[0], values[1], values[0], values[0], None, values[0][:-1], values[0]]
    wv = np.array([5, 7, 4, 5, 5, 5, 5])  # the vector's window version as read
    v = np.array([9, 8, 9, 10, 9, 9, 9])  # meta v as read
    ok, n, newest, got = delta_batch(blobs, wv, v, 4)
    # 2: written on another vector; 3: an APPLY since; 4: none; 5: torn value
    assert ok.tolist() == [True, True, False, False, False, False, True]
    assert n.tolist() == [3, 1, 0, 0, 0, 0, 3]
    assert newest.tolist() == [111, 222, 0, 0, 0, 0, 111]
    np.testing.assert_array_equal(got[[0, 1, 6]], d[[0, 1, 0]])
    assert not got[2:6].any()
    assert not delta_batch([values[0]], np.array([5]), np.array([9]), 8)[0].any(), "other E"
