"""bf16 encoding on the CPU (`Encoder(bf16=True)`, encoder/api.py): vectors that agree with
float32's, one compiled graph warmed in the precision it runs in, and float32 (with a
warning) on a CPU that would only emulate bf16."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from encoder import api, compiled
from tests.encoder.conftest import encoder_of

needs_bf16 = pytest.mark.skipif(
    not api.cpu_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)"
)
needs_compiler = pytest.mark.skipif(compiled.compiler() is None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def setup(tiny_model):  # type: ignore[no-untyped-def]
    return tiny_model  # conftest.py: (model, TokenizerConfig, windows, now)


_encoder = encoder_of  # conftest.py


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@needs_bf16
def test_bf16_vectors_agree_with_float32(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, windows, now = setup
    full = _encoder(setup)
    low = _encoder(setup, bf16=True)
    assert low.bf16 and not full.bf16
    ws = [*windows, []]  # an empty window stays a zero row
    a, b = low.encode(ws, now), full.encode(ws, now)
    assert a.dtype == np.float32 and a.shape == b.shape
    assert not a[-1].any()
    assert np.abs(a - b).max() > 0  # it did compute in bf16
    assert _cosines(a[:-1], b[:-1]).min() > 0.9999


@needs_bf16
@needs_compiler
def test_compiled_bf16_runs_the_graph_it_warmed(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dynamo compiles a graph per autocast state: the warm-up runs in bf16, so the first
    real batch finds its graph instead of compiling another one on the encoding thread."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _, _, windows, now = setup
    fast = _encoder(setup, bf16=True, compile=True, max_tokens=256)
    assert fast.compiled and fast.bf16
    code = fast.model.tail.own.__func__.__code__
    assert len(_debug_get_cache_entry_list(code)) == 1  # the warm-up's
    got = fast.encode(windows, now)
    assert len(_debug_get_cache_entry_list(code)) == 1  # the same graph
    want = _encoder(setup, bf16=True).encode(windows, now)
    assert _cosines(got, want).min() > 0.9999


def test_bf16_without_native_support_encodes_float32(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(api, "cpu_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="encoder.api"):
        enc = _encoder(setup, bf16=True)
    assert not enc.bf16 and "no native bf16" in caplog.text
    _, _, windows, now = setup
    np.testing.assert_array_equal(enc.encode(windows, now), _encoder(setup).encode(windows, now))


def test_the_refresher_loads_versions_in_the_precision_asked(  # type: ignore[no-untyped-def]
    registry_with_two, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.refresh.encoders import EncoderCache

    monkeypatch.setattr(api, "cpu_bf16", lambda: True)
    models, v1, _ = registry_with_two
    assert EncoderCache(models, "cpu", bf16=True).get(v1).bf16
    assert not EncoderCache(models, "cpu").get(v1).bf16


def test_a_forward_pass_takes_twice_the_tokens_once_compiled_in_bf16(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled bf16 encodes 8,192 tokens a pass (measured faster there); float32 and eager
    bf16 keep 4,096 (slower at 8,192); a size given stays as given."""
    monkeypatch.setattr(api, "cpu_bf16", lambda: True)
    enc = _encoder(setup, bf16=True)
    assert enc.bf16 and not enc.compiled and enc.max_tokens == api.CPU_MAX_TOKENS == 4_096
    enc.compiled = True  # as a finished (background) compile leaves it
    assert enc.max_tokens == api.CPU_COMPILED_BF16_MAX_TOKENS == 8_192
    plain = _encoder(setup)
    plain.compiled = True
    assert plain.max_tokens == 4_096
    assert _encoder(setup, bf16=True, max_tokens=256).max_tokens == 256
