"""The compiled encoder (encoder/compiled.py): the same vectors as the eager model for
every batch shape, one graph for all of them, and the eager model when compiling cannot work."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from encoder import compiled
from encoder.api import Encoder
from encoder.model import UserEncoder
from encoder.tokenizer import Tokenizer
from tests.encoder.conftest import encoder_of

needs_compiler = pytest.mark.skipif(compiled.compiler() is None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def setup(tiny_model):  # type: ignore[no-untyped-def]
    return tiny_model  # conftest.py: (model, TokenizerConfig, windows, now)


_encoder = encoder_of  # conftest.py


@needs_compiler
def test_compiled_layers_encode_what_the_eager_ones_do(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _, _, windows, now = setup
    eager = _encoder(setup, compile=False)
    fast = _encoder(setup, compile=True, max_tokens=256)
    assert fast.compiled and not eager.compiled
    assert isinstance(fast.model.tail, compiled.CompiledVectors)
    rng = np.random.default_rng(0)
    # every batch shape: ragged lengths 1..64, one window, one event each, an empty window
    batches = [
        [w[-int(rng.integers(1, 65)) :] for w in windows],
        windows[:1],
        [w[-1:] for w in windows[:5]],
        [windows[0], [], windows[1][-3:]],
        windows,
    ]
    for ws in batches:
        np.testing.assert_allclose(fast.encode(ws, now), eager.encode(ws, now), atol=1e-5, rtol=0)
    # batch size and length are symbolic: every batch above ran one compiled graph
    code = fast.model.tail.own.__func__.__code__
    assert code is not UserEncoder.vectors.__code__  # its graphs go with this encoder
    assert len(_debug_get_cache_entry_list(code)) == 1


@needs_compiler
def test_every_summary_option_compiles_to_the_eager_vectors(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph holds what the options add after the layers: counts of the top values and
    their MLP (`count_top`, `count_hidden`), decayed bags, the manner bag, the counts' own
    components (`count_dims`)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model, tok, windows, now = setup
    cfg = replace(model.cfg, count_top=4, count_hidden=8, decays_h=(24.0,), manner_bag=True,
                  count_dims=4)  # fmt: skip
    torch.manual_seed(1)
    full = UserEncoder(tok, cfg).eval()
    eager = Encoder("v", full, Tokenizer(tok), torch.device("cpu"))
    twin = UserEncoder(tok, cfg)
    twin.load_state_dict(full.state_dict())
    fast = Encoder("v", twin.eval(), Tokenizer(tok), torch.device("cpu"), compile=True)
    assert fast.compiled and isinstance(fast.model.tail, compiled.CompiledVectors)
    rng = np.random.default_rng(1)
    ragged = [w[-int(rng.integers(2, 65)) :] for w in windows]
    np.testing.assert_allclose(fast.encode(ragged, now), eager.encode(ragged, now), atol=1e-5)


def test_no_compiler_keeps_the_eager_layers(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with caplog.at_level(logging.WARNING, logger="encoder.compiled"):
        enc = _encoder(setup, compile=True)
    assert not enc.compiled and enc.model.tail is None
    assert "no C++ compiler" in caplog.text
    _, _, windows, now = setup
    np.testing.assert_array_equal(
        enc.encode(windows, now), _encoder(setup, compile=False).encode(windows, now)
    )


@pytest.mark.parametrize(
    ("message", "logged"),
    [("InductorError: C++ compile error\nmore lines", "C++ compile error"), ("", "RuntimeError")],
)
def test_a_failing_compile_keeps_the_eager_layers(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, message, logged
) -> None:
    def broken(fn, **kw):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            raise RuntimeError(message)

        return run

    monkeypatch.setattr(compiled.torch, "compile", broken)
    monkeypatch.setattr(compiled, "compiler", lambda: "/usr/bin/g++")
    with caplog.at_level(logging.WARNING, logger="encoder.compiled"):
        enc = _encoder(setup, compile=True)
    assert not enc.compiled and logged in caplog.text
    assert "more lines" not in caplog.text  # the first line only


def test_compile_refuses_a_model_in_training_mode(setup) -> None:  # type: ignore[no-untyped-def]
    model, tok, _, _ = setup
    with pytest.raises(ValueError, match="eval mode"):
        compiled.compile_model(UserEncoder(tok, model.cfg).train())


@needs_compiler
def test_refresh_loads_versions_compiled_when_asked(  # type: ignore[no-untyped-def]
    registry_with_two, small_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.refresh.encoders import EncoderCache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    models, v1, _ = registry_with_two
    cache = EncoderCache(models, "cpu", compile=True)
    fast = cache.get(v1)
    plain = EncoderCache(models, "cpu").get(v1)
    cache.close()  # waits for the background compile
    assert fast.compiled and not plain.compiled
    windows = list(small_data.windows(64).values())
    now = small_data.config.end_ms
    np.testing.assert_allclose(fast.encode(windows, now), plain.encode(windows, now), atol=1e-5)


@needs_compiler
def test_a_background_compile_encodes_eagerly_meanwhile(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compile_in_background`: the encoder answers at once eagerly, then compiled (same
    vectors); a compile that fails leaves it eager, still answering."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _, _, windows, now = setup
    want = _encoder(setup, compile=False).encode(windows, now)
    enc = _encoder(setup, compile=False)
    enc.compile_in_background()
    during = enc.encode(windows, now)  # while compiling (or just after)
    assert enc.wait_compiled(120) and enc.compiled and not enc.compiling
    assert isinstance(enc.model.tail, compiled.CompiledVectors)
    np.testing.assert_allclose(during, want, atol=1e-5)
    np.testing.assert_allclose(enc.encode(windows, now), want, atol=1e-5)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    broken = _encoder(setup, compile=False)
    broken.compile_in_background()
    assert not broken.wait_compiled(120) and not broken.compiled
    np.testing.assert_allclose(broken.encode(windows, now), want, atol=1e-5)
