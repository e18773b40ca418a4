"""deploy/Dockerfile: hadolint clean, non-root, one file for the CPU and CUDA images."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.ops.support import DEPLOY

DOCKERFILE = DEPLOY / "Dockerfile"


def _lint(hadolint: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_clean(hadolint: Path) -> None:
    proc = _lint(hadolint, DOCKERFILE)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_hadolint_really_lints(hadolint: Path, tmp_path: Path) -> None:
    """Control: the same call flags a Dockerfile with known findings (so 'clean' means clean)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install curl\n")
    proc = _lint(hadolint, bad)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag


def _final_stage(text: str) -> str:
    return re.split(r"(?im)^FROM\s", text)[-1]


def test_runs_as_non_root_persona_entrypoint() -> None:
    final = _final_stage(DOCKERFILE.read_text())
    users = re.findall(r"(?im)^USER\s+(\S+)", final)
    assert users, "the runtime stage sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root"), users[-1]
    assert re.search(r'(?im)^ENTRYPOINT\s+\["persona"\]', final), "entrypoint is not persona"


def test_cpu_and_cuda_variants_from_build_args() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"(?m)^ARG VARIANT=cpu$", text)
    assert '"${VARIANT}" = "cuda"' in text
    # each variant installs one whole lock: CUDA swaps the kernels and the index, never both
    # faiss builds in one image (tests/ops/test_ops_locks.py checks the locks themselves)
    assert re.search(r'VARIANT}" = "cuda".*?-r requirements-gpu\.lock', text, re.S)
    assert re.search(r'VARIANT}" = "cpu".*?-r requirements\.lock', text, re.S)
    # torchrec's metadata would pull the CUDA fbgemm-gpu into the CPU image: no resolution
    assert text.count("pip install --no-cache-dir --no-deps --require-hashes") == 2
