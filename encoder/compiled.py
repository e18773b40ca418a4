"""The encoder compiled for the CPU (TorchInductor, frozen weights): everything after the
table lookups as one graph.

    from encoder.compiled import compile_model
    compile_model(model)  # True: model.encode_batch now runs the compiled graph

What compiles is `UserEncoder.vectors`: the events' sums placed in their windows with
positions and ages, the Transformer layers, the attention pooling, the bags and the
projection. Frozen: the weights become constants of the graph (Inductor's `freezing`), which
lets it pack them for oneDNN and fuse the bias, ReLU and residual adds into the matmuls
instead of a pass over each activation tensor for each; around the layers, Inductor fuses
the ~50 small operations of the placing, pooling and bags into a few loops (each of them,
eager, woke the sleeping OpenMP workers for a few microseconds of work). The table lookups
(`embedding_bag`) stay eager. Measured in `benchmarks/encode.py`.
Inference only: a frozen graph never sees later changes to the weights, so only an
`Encoder` (whose model is never trained again) compiles.

One graph serves every batch: batch size, window length and event count are symbolic.
Batches of one window, one position or one event run eagerly (Dynamo specialises sizes 0
and 1: each would compile a graph of its own, for the cheapest batches there are).

Compiling needs a C++ compiler (``$CXX``, else ``g++``; the CPU image installs one) and
takes seconds to tens of seconds once per process and version (Inductor's cache, under
``$TORCHINDUCTOR_CACHE_DIR`` or the temp dir, shortens it for the next process). When it
fails, a warning, and the model stays eager: an encoder is never lost to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import types
from collections.abc import Callable

import torch
import torch._dynamo
import torch._inductor.config

from encoder.model import Lookups, UserEncoder

log = logging.getLogger(__name__)

# torch documents these where they live, in its private modules
_mark_dynamic = torch._dynamo.mark_dynamic  # noqa: SLF001
_inductor_config = torch._inductor.config  # noqa: SLF001
# Set process-wide when a model is first compiled, not passed as torch.compile(options=...):
# there `freezing` is ignored (measured: addmm and bias copies again); nor patched around
# each call: `config.patch` sets the same global state, and a thread compiling one version in
# the background while another thread encodes with a compiled one would have each restore
# the other's values mid-compile. One compiling thread: Inductor may keep a pool of compile
# worker processes when it compiles with more. Only this module compiles in our processes.
_INDUCTOR = {"freezing": True, "compile_threads": 1}


class CompiledVectors:
    """Callable in place of `UserEncoder.vectors` (`Lookups` in): the compiled graph for
    batches of at least 2 windows, 2 positions and 2 events, the eager method otherwise."""

    def __init__(self, eager: Callable[..., torch.Tensor]) -> None:
        self.eager = eager
        self.own = _own_code(eager)  # what Dynamo compiles (its graphs live on its code)
        self.graph = torch.compile(self.own, dynamic=False)

    def __call__(self, w: Lookups) -> torch.Tensor:
        if w.lengths.shape[0] < 2 or w.ar.shape[0] < 2 or w.static.shape[0] < 2:
            return self.eager(w)
        for x in w:
            if x is not None:
                _mark_dynamic(x, 0)  # events, windows, positions: symbolic
        out: torch.Tensor = self.graph(w)
        return out


def _own_code(method: Callable[..., torch.Tensor]) -> types.MethodType:
    """The bound method again, over a copy of its code object. Dynamo keeps compiled graphs
    (and their frozen weights) on the code object: on the class's shared one they would
    outlive the encoder (a refresher loads a version at each cutover); on a copy they go
    with it."""
    assert isinstance(method, types.MethodType)
    f = method.__func__
    code = f.__code__.replace()  # an equal, separate code object
    g = types.FunctionType(code, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return types.MethodType(g, method.__self__)


def compiler() -> str | None:
    """The C++ compiler Inductor would call, or None when there is none."""
    return shutil.which(os.environ.get("CXX") or "g++")


def compile_model(
    model: UserEncoder,
    precision: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> bool:
    """Compile the model's `vectors` (CPU, inference; `encode_batch` then calls the graph)
    and warm it on a small batch under `precision()` (the encoder's autocast: Dynamo
    compiles a graph per autocast state, and the first real call must find this one),
    checked against the eager method. Returns False, with a warning, when there is no
    compiler or compiling fails; the model is then unchanged."""
    if model.training or model.pos.weight.device.type != "cpu":
        raise ValueError("compile_model: a CPU model in eval mode (inference only)")
    if compiler() is None:
        log.warning("encoder compile: no C++ compiler ($CXX or g++): eager model")
        return False
    for key, value in _INDUCTOR.items():
        setattr(_inductor_config, key, value)
    tail = CompiledVectors(model.vectors)
    d, n = model.cfg.d_model, 11
    counts = model.counts if model.reads_counts else None  # as `lookups` gives them
    try:
        with torch.inference_mode(), precision():  # as `Encoder` calls it (inference tensors)
            # distinct sizes (Dynamo gives equal sizes one symbol): 3 windows, 5 positions,
            # 11 events; dtypes as the tokenizer's batches give them
            counted = None if counts is None else (torch.rand(n, counts.size) < 0.3).float()
            w = Lookups(torch.randn(n, d), torch.randn(n, d), torch.tensor([5, 4, 2]),
                        torch.arange(5), torch.rand(n) * 3, counted)  # fmt: skip
            got, want = tail(w), model.vectors(w)
            low = torch.is_autocast_enabled("cpu")  # bf16: 8 bits of mantissa
    except Exception as exc:  # any compiler failure: the eager model
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning("encoder compile failed, eager model: %s", first)
        return False
    tol = 5e-2 if low else 1e-4
    if not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol):
        err = float((got - want).abs().max())
        log.warning("encoder compile: output differs from eager by %.2g: eager model", err)
        return False
    model.tail = tail
    return True
