"""Key layout v1 and the binary event record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contract.events import Event
from contract.record import pack_record, unpack_record
from services.store import layout

names = st.text(min_size=1, max_size=30)
props = st.dictionaries(
    names, st.one_of(st.text(max_size=40), st.floats(allow_nan=False)), max_size=8
)


@given(
    uid=st.text(min_size=1, max_size=50),
    eid=st.text(min_size=1, max_size=50),
    ts=st.integers(1, 2**62),
    typ=st.text(min_size=1, max_size=20),
    p=props,
)
def test_record_round_trip(uid: str, eid: str, ts: int, typ: str, p: dict) -> None:
    ev = Event(uid, eid, ts, typ, p)
    try:
        rec = pack_record(ev)
    except UnicodeEncodeError:  # lone surrogates never pass the consumer's validation
        return
    assert unpack_record(uid, eid, rec) == ev


def test_record_is_compact() -> None:
    ev = Event("u1", "e9", 1_732_345_678_123, "click", {"item": "i42", "campaign": "c7", "p": 9.9})
    assert len(pack_record(ev)) < 64


def test_unknown_record_version_is_refused() -> None:
    rec = bytearray(pack_record(Event("u", "e", 5, "t")))
    rec[0] = 99
    try:
        unpack_record("u", "e", bytes(rec))
    except ValueError as exc:
        assert "layout 99" in str(exc)
    else:
        raise AssertionError("a record of another layout version was read")


def test_all_keys_of_a_user_share_the_bucket_tag() -> None:
    for uid in ["u1", "{u1}", "a}b{c", "x\ny", "\x00", "é" * 100]:
        tag = layout.tag(uid).encode()
        w, e, m = layout.user_keys(uid)
        for k in (w, e, m):
            # The hash tag is the first {...}: ours, whatever the id holds.
            assert k.index(b"{") == 2
            assert k[2 : k.index(b"}") + 1] == tag
        assert layout.dirty_key(layout.bucket(uid)).startswith(b"p:" + tag)


@given(a=st.text(min_size=1), b=st.text(min_size=1))
def test_distinct_users_never_share_a_key(a: str, b: str) -> None:
    try:
        ka, kb = set(layout.user_keys(a)), set(layout.user_keys(b))
    except UnicodeEncodeError:
        return
    assert (a == b) == (ka == kb)
    if a != b:
        assert not ka & kb
