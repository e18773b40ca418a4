"""The surface the services use: load a model version, turn windows into vectors.

    enc = Encoder.load(Path("models"))            # the active version
    vecs = enc.encode([window_a, window_b], now_ms)  # (2, 64) float32, unit rows

Batches are bucketed by length (windows sorted by length, cut into groups under a token
budget) to limit padding; inference runs under `torch.inference_mode`, on CUDA with bf16
autocast when a GPU is present, else float32 on the CPU, or bf16 autocast there too with
``bf16=True`` on a CPU that computes bf16 natively (`cpu_bf16`: AVX512-BF16 or AMX; its
vectors agree with float32's to a cosine of 0.99999; measured in `benchmarks/encode.py`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.events import Event
from encoder import registry
from encoder.compiled import compile_model
from encoder.eventlog import EventLog
from encoder.model import ModelConfig, UserEncoder
from encoder.propensity import OutcomeHeads
from encoder.streams import Streams
from encoder.tokenizer import TokenBatch, Tokenizer, TokenizerConfig, TokenizerFormatError

log = logging.getLogger(__name__)


def active_version(models_dir: Path) -> str | None:
    return registry.active_version(models_dir)


@functools.cache
def cpu_bf16() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 or AMX-BF16, Linux's cpuinfo)? On
    others bf16 is emulated, slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def length_buckets(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Window indices grouped by similar length: sorted, then cut when B * T_max > budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        t = max(lengths[i], 1)
        if cur and ((len(cur) + 1) * t > max_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


# Tokens (windows x events) encoded in one forward pass. On the CPU a smaller batch keeps
# each layer's activations in cache and in the allocator's reused heap (a 256 x 64-event
# batch's 32 MiB feed-forward tensors are mmapped and page-faulted afresh every call):
# 512 windows of 64 events, trained version, 2 threads (benchmarks/encode.py, 2026-12-03):
# 2,048 tokens 2,417 users/s, 4,096 2,354, 8,192 1,696, 16,384 1,637 (medians of 4 rounds).
CPU_MAX_TOKENS = 4_096
# Compiled bf16 on the CPU: half the bytes a token and the graph's fused loops, so twice the
# tokens fit what 4,096 did. 512 windows of 64 events, rounds 2-3 of 3 (2026-12-03, Intel
# Xeon AMX): 2,048 tokens 6,201-6,204 users/s, 4,096 7,337-7,357, 8,192 8,031-8,093, 16,384
# 7,019-7,326. Not for the others: compiled float32 read 4,074 against 4,944 at 8,192 in
# its first round (5,069-5,146 against 4,868-4,879 after), eager bf16 3,953-4,038 against
# 5,388-5,453.
CPU_COMPILED_BF16_MAX_TOKENS = 8_192
CUDA_MAX_TOKENS = 16_384  # a GPU wants the larger batch (not measured here: no GPU yet)


class Encoder:
    """A loaded model version, ready for inference."""

    def __init__(
        self,
        version: str,
        model: UserEncoder,
        tokenizer: Tokenizer,
        device: torch.device,
        max_tokens: int | None = None,
        max_batch: int = 256,
        outcomes: OutcomeHeads | None = None,
        fuse_tables: bool = True,
        compile: bool = False,
        bf16: bool = False,
        streams: int = 1,
    ) -> None:
        self.version = version
        self.outcomes = outcomes  # calibrated outcome heads (None: a version without them)
        self.model = model.eval().to(device)
        if fuse_tables:  # one embedding_bag per group at inference (model.py)
            self.model.fuse_tables()
        self.tokenizer = tokenizer
        self.device = device
        self.dim = model.cfg.out_dim
        self.max_events = tokenizer.config.max_events
        # bf16 autocast: always on CUDA; on the CPU when asked and the CPU has native bf16
        self.bf16 = device.type == "cuda" or (bf16 and device.type == "cpu" and cpu_bf16())
        self._max_tokens, self.max_batch = max_tokens, max_batch
        if bf16 and not self.bf16:
            log.warning("encoder bf16: %s has no native bf16 (AVX512-BF16/AMX): float32", device)
        # the model after its table lookups compiled (encoder/compiled.py; CPU only): False
        # when not asked, on CUDA, or when compiling failed (a warning; the eager model runs)
        self.compiled = False
        self._compiling: threading.Thread | None = None
        # CPU passes on `streams` threads at once (encoder/streams.py); None: the caller's
        self._streams = Streams(streams) if streams > 1 and device.type == "cpu" else None
        if streams > 1 and self._streams is None:
            log.warning("encoder streams: CPU only, %s runs one pass at a time", device)
        # the torch threads a pass runs on (a stream's, else this thread's, as the caller's
        # is assumed to be): what a background compile compiles for
        self._threads = self._streams.threads if self._streams else torch.get_num_threads()
        if compile and self._on_cpu():  # where the passes run: a compiled graph serves the
            # torch thread count it was compiled under (encoder/streams.py)
            on = self._streams
            self.compiled = self._compile() if on is None else on.call(self._compile)

    @property
    def threads_per_pass(self) -> int | None:
        """Torch threads each stream's pass runs on; None: passes run on the caller's
        thread, one at a time."""
        return None if self._streams is None else self._streams.threads

    def _compile(self) -> bool:
        return compile_model(self.model, self.autocast)

    def close(self) -> None:
        """Stop the stream threads (if any) once a background compile is done; an encode
        after it starts them again."""
        self.wait_compiled()
        if self._streams is not None:
            self._streams.close()

    @classmethod
    def load(
        cls,
        models_dir: Path,
        version: str | None = None,
        device: str | None = None,
        compile: bool = False,
        bf16: bool = False,
        streams: int = 1,
    ) -> Encoder:
        """Load `version` (None: the active one) from the registry; a version whose files do
        not match its manifest is refused (RegistryError). `compile`: compile the model on
        the CPU (`encoder/compiled.py`; seconds at load, ~1.4x the encode rate); `bf16`:
        bf16 autocast on a CPU with native bf16 (see the module docstring); `streams`: run
        that many CPU passes at once, each on its own thread (`encoder/streams.py`)."""
        v = registry.open_version(Path(models_dir), version)
        folder = Path(models_dir) / v
        try:
            tok_cfg = TokenizerConfig.from_json((folder / "tokenizer.json").read_text())
        except TokenizerFormatError as exc:
            raise registry.RegistryError(f"model version {v}: {exc}") from None
        model_cfg = ModelConfig.from_json((folder / "model.json").read_text())
        model = UserEncoder(tok_cfg, model_cfg)
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        heads = folder / "outcomes.json"
        outcomes = OutcomeHeads.from_json(heads.read_text()) if heads.exists() else None
        dev = pick_device(device)
        return cls(v, model, Tokenizer(tok_cfg), dev, outcomes=outcomes, compile=compile,
                   bf16=bf16, streams=streams)  # fmt: skip

    @classmethod
    def from_model(
        cls,
        model: UserEncoder,
        version: str = "unsaved",
        outcomes: OutcomeHeads | None = None,
        compile: bool = False,
        bf16: bool = False,
        streams: int = 1,
    ) -> Encoder:
        """An in-memory model on the CPU (`compile`, `bf16`, `streams`: as in `load`)."""
        tok = Tokenizer(model.tok)
        dev = pick_device("cpu")
        return cls(version, model, tok, dev, outcomes=outcomes, compile=compile, bf16=bf16,
                   streams=streams)  # fmt: skip

    def compile_in_background(self) -> None:
        """Compile the model (as `compile=True` does) in a thread while this encoder keeps
        encoding eagerly; `compiled` turns True once the compiled graph is in place (one
        attribute swap), and stays False if compiling fails (a warning). The
        refresher loads a version this way: a cutover's new version encodes at once instead
        of after a 5-15 s compile. `wait_compiled` joins the thread."""
        if self._compiling is not None or self.compiled or not self._on_cpu():
            return

        def run() -> None:  # compiled for the thread count the passes run on
            default = torch.get_num_threads()  # a new thread's: the process default
            torch.set_num_threads(self._threads)
            try:
                self.compiled = self._compile()
            finally:
                torch.set_num_threads(default)  # the default of later threads, as it was

        self._compiling = threading.Thread(target=run, name=f"compile-{self.version}")
        self._compiling.start()

    def _on_cpu(self) -> bool:
        """Compiling is for the CPU; elsewhere a warning (the eager model runs)."""
        if self.device.type != "cpu":
            log.warning("encoder compile: CPU only, %s runs the eager model", self.device)
        return self.device.type == "cpu"

    @property
    def max_tokens(self) -> int:
        """Tokens (windows x events) a forward pass takes: as given, else by device and path
        (`CUDA_MAX_TOKENS`, `CPU_COMPILED_BF16_MAX_TOKENS` once compiled in bf16,
        `CPU_MAX_TOKENS`)."""
        if self._max_tokens is not None:
            return self._max_tokens
        if self.device.type == "cuda":
            return CUDA_MAX_TOKENS
        return CPU_COMPILED_BF16_MAX_TOKENS if self.compiled and self.bf16 else CPU_MAX_TOKENS

    @max_tokens.setter
    def max_tokens(self, value: int) -> None:
        self._max_tokens = value

    @property
    def compiling(self) -> bool:
        """A background compile is running."""
        return self._compiling is not None and self._compiling.is_alive()

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for a background compile (if any) up to `timeout` s; whether it compiled."""
        if self._compiling is not None:
            self._compiling.join(timeout)
        return self.compiled

    def encode(self, windows: Sequence[Sequence[Event]], now_ms: int | Sequence[int]) -> np.ndarray:
        """Vectors for windows (each oldest first; the last `max_events` are used).

        Args:
            windows: B windows of events.
            now_ms: encode time, one for all or one per window (ages are relative to it).

        Returns:
            (B, dim) float32, rows L2-normalised (an empty window gives a zero row).
        """
        nows = np.broadcast_to(np.asarray(now_ms, dtype=np.int64), (len(windows),))
        lengths = [min(len(w), self.max_events) for w in windows]

        def batch(idx: list[int]) -> TokenBatch:
            return self.tokenizer.encode([windows[i] for i in idx], nows[idx])

        return self._run(lengths, batch)

    def encode_rows(
        self, log: EventLog, lo: np.ndarray, hi: np.ndarray, now_ms: np.ndarray
    ) -> np.ndarray:
        """Vectors of the windows ``log`` rows ``lo[b]:hi[b]`` (the newest `max_events` of
        each are read) at `now_ms`. The same output as `encode` on the same windows; no
        `Event` objects are made. (B, dim) float32."""
        lo = np.maximum(lo, hi - self.max_events)

        def batch(idx: list[int]) -> TokenBatch:
            return log.token_batch(lo[idx], hi[idx], now_ms[idx], self.tokenizer)

        return self._run((hi - lo).tolist(), batch)

    def autocast(self) -> torch.autocast:
        """The precision the encoder computes in: bf16 autocast when `bf16`, else none."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _run(self, lengths: Sequence[int], batch: Any) -> np.ndarray:
        out = np.zeros((len(lengths), self.dim), dtype=np.float32)

        def run(idx: list[int]) -> None:
            with torch.inference_mode(), self.autocast():  # per thread
                z = self.model.encode_batch(batch(idx))  # (b, E)
                out[idx] = z.float().cpu().numpy()

        groups = length_buckets(lengths, self.max_tokens, self.max_batch)
        if self._streams is None:
            for idx in groups:
                run(idx)
        else:
            self._streams.map(run, groups)
        out[np.asarray(lengths) == 0] = 0.0
        return out
