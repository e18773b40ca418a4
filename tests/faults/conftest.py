"""Fault-suite reporting: each scenario records one row; `make reliability` writes them out.

With PERSONA_RELIABILITY_OUT=path set, the rows of the session are written there as JSON
lines at the end of the run; `tests/faults/report.py` renders them into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_ROWS: list[dict[str, Any]] = []


@pytest.fixture
def report() -> Callable[..., None]:
    """`report(scenario=..., produced=, applied=, duplicated=, lost=, recovery_s=, note=)`"""

    def add(**row: Any) -> None:
        _ROWS.append(row)

    return add


@pytest.fixture(scope="session", autouse=True)
def _write_report() -> Iterator[None]:
    yield
    out = os.environ.get("PERSONA_RELIABILITY_OUT")
    if out and _ROWS:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            for row in _ROWS:
                fh.write(json.dumps(row) + "\n")
