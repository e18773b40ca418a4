"""Passes on several threads at once (`Encoder(streams=N)`, encoder/streams.py): the same
vectors and unknown-property counts as one thread, every pass on a stream thread, one
compiled graph for the streams' thread count (also after a background compile), errors
raised to the caller, threads stopped by `close`, the process's thread default unchanged."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from contract.events import Event
from encoder import compiled
from encoder.streams import Streams, default_threads
from tests.encoder.conftest import encoder_of

needs_compiler = pytest.mark.skipif(compiled.compiler() is None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def setup(tiny_model):  # type: ignore[no-untyped-def]
    return tiny_model  # conftest.py: (model, TokenizerConfig, windows, now)


_encoder = encoder_of  # conftest.py


def _stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("encode-stream")]


def _with_unknown(windows: list[list[Event]]) -> list[list[Event]]:
    """The windows with a property no spec knows on every third event."""

    def odd(e: Event) -> Event:
        return replace(e, props={**e.props, "coupon": "c1"})

    return [[odd(e) if i % 3 == 0 else e for i, e in enumerate(w)] for w in windows]


def test_streams_encode_what_one_thread_does(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, windows, now = setup
    ws = [*_with_unknown(windows), []]  # an empty window stays a zero row
    one = _encoder(setup, max_tokens=128)
    many = _encoder(setup, max_tokens=128, streams=2)  # 128 tokens: many passes
    assert many.threads_per_pass == default_threads(2) and one.threads_per_pass is None
    ran_on: Counter[str] = Counter()
    encode_batch = many.model.encode_batch

    def spy(batch):  # type: ignore[no-untyped-def]
        ran_on[threading.current_thread().name.rsplit("_", 1)[0]] += 1
        return encode_batch(batch)

    many.model.encode_batch = spy  # type: ignore[method-assign]
    try:
        want, got = one.encode(ws, now), many.encode(ws, now)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert not got[-1].any()
        assert list(ran_on) == ["encode-stream"] and ran_on["encode-stream"] > 2
        assert many.tokenizer.take_unknown() == one.tokenizer.take_unknown() != {}
    finally:
        many.close()
    assert not _stream_threads()


def test_a_failing_pass_raises_to_the_caller(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, windows, now = setup
    enc = _encoder(setup, max_tokens=128, streams=2)
    encode_batch = enc.model.encode_batch
    calls = []

    def fails_once(batch):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("pass failed")
        return encode_batch(batch)

    enc.model.encode_batch = fails_once  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="pass failed"):
            enc.encode(windows, now)
        assert enc.encode(windows, now).shape == (len(windows), enc.dim)  # still serves
    finally:
        enc.close()


def test_streams_leave_the_thread_default_as_it_was() -> None:
    """A stream thread's count is its own: threads started later get the process default."""
    default = torch.get_num_threads()
    streams = Streams(2, threads=1)
    try:
        got: list[int] = []
        later = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
        later.start()
        later.join()
        inside: list[int] = []
        streams.map(lambda _: inside.append(torch.get_num_threads()), range(4))
        assert got == [default] and inside == [1] * 4
    finally:
        streams.close()
    assert not _stream_threads()
    with pytest.raises(ValueError, match="at least 2"):
        Streams(1)


@needs_compiler
def test_compiled_streams_run_one_graph_for_their_thread_count(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled on a stream thread (at load, or in the background): the streams' passes all
    run the graph it left, no second compile for another thread count."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _, _, windows, now = setup
    want = _encoder(setup).encode(windows, now)
    at_load = _encoder(setup, compile=True, streams=2, max_tokens=256)
    later = _encoder(setup, streams=2, max_tokens=256)
    later.compile_in_background()
    try:
        assert later.wait_compiled(120) and at_load.compiled
        for enc in (at_load, later):
            for _ in range(2):
                np.testing.assert_allclose(enc.encode(windows, now), want, atol=1e-5, rtol=0)
            code = enc.model.tail.own.__func__.__code__  # type: ignore[union-attr]
            assert len(_debug_get_cache_entry_list(code)) == 1
    finally:
        at_load.close()
        later.close()
    assert not _stream_threads()


def test_the_refresher_loads_versions_on_streams_and_stops_them(  # type: ignore[no-untyped-def]
    registry_with_two,
) -> None:
    from services.refresh.config import RefreshConfig
    from services.refresh.encoders import EncoderCache

    models, v1, v2 = registry_with_two
    cache = EncoderCache(models, "cpu", streams=2)
    assert cache.get(v1).threads_per_pass is not None
    cache.get(v2)
    assert len(_stream_threads()) == 4
    cache.keep({v2})  # v1 dropped: its threads stop
    assert len(_stream_threads()) == 2
    cache.close()
    assert not _stream_threads()
    again = cache.get(v2)  # the same encoder after close: its threads start again
    assert again.encode([[]], 0).shape == (1, again.dim) and len(_stream_threads()) == 2
    cache.close()
    assert not _stream_threads()
    assert EncoderCache(models, "cpu").get(v1).threads_per_pass is None
    with pytest.raises(ValueError, match="encode_streams"):
        RefreshConfig(encode_streams=0)
