"""Progress bars for long work that stay quiet when stderr is not a terminal (logs, CI)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "step") -> Any:
    """A tqdm bar on an interactive stderr; a silent stand-in with the same calls otherwise."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and sys.stderr.isatty()))
