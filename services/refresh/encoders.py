"""Loaded encoder versions, one per model version the refresher writes."""

from __future__ import annotations

import logging
from pathlib import Path

from encoder.api import Encoder

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model version the refresher must write could not be loaded from the registry."""


class EncoderCache:
    """`get(version)` loads a version from the registry once and keeps it; `keep(versions)`
    drops the ones no longer written (a retired version frees its memory)."""

    def __init__(self, models_dir: Path, device: str | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.device = device
        self._loaded: dict[str, Encoder] = {}

    def get(self, version: str) -> Encoder:
        enc = self._loaded.get(version)
        if enc is None:
            try:
                enc = Encoder.load(self.models_dir, version, self.device)
            except Exception as exc:
                raise ModelLoadError(f"model {version} from {self.models_dir}: {exc}") from exc
            log.info("loaded model %s on %s (dim %d)", version, enc.device, enc.dim)
            self._loaded[version] = enc
        return enc

    def put(self, enc: Encoder) -> None:
        """Use an already built encoder for its version (tests, benchmarks)."""
        self._loaded[enc.version] = enc

    def keep(self, versions: set[str]) -> None:
        for v in set(self._loaded) - versions:
            del self._loaded[v]
