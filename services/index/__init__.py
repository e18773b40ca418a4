"""The lookalike index: faiss over user vectors, kept current from the update log."""

from services.index.ann import BuildInfo, LookalikeIndex
from services.index.config import IndexConfig, IndexKind

__all__ = ["BuildInfo", "IndexConfig", "IndexKind", "LookalikeIndex"]
