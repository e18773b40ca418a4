"""The checked-in code of the persona.v1 contract is what `make protos` makes from
proto/persona/v1 now (Python for the services and the Python client, Go for the Go
client), and the protos pass `buf lint` and `buf breaking` against proto/baseline.json
(also `make proto-check`; here so that a bare `pytest tests` holds them too)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.conftest import ROOT
from tests.go_support import GO_DIR

PY_OUT = ROOT / "clients" / "python" / "src" / "persona" / "v1"
BUF = ROOT / "deploy" / "tools" / "node_modules" / ".bin" / "buf"


def _same_tree(made: Path, kept: Path, pattern: str) -> None:
    names = sorted(p.name for p in made.glob(pattern))
    assert names == sorted(p.name for p in kept.glob(pattern)), (names, kept)
    _, diff, errors = filecmp.cmpfiles(made, kept, names, shallow=False)
    assert not diff and not errors, f"stale generated code in {kept}: {diff + errors}; make protos"


def test_python_code_is_current(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}"]
    subprocess.run([*protoc, f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", *protos],
                   check=True, cwd=ROOT / "proto")  # fmt: skip
    subprocess.run([*protoc, f"--grpc_python_out={tmp_path}", "persona/v1/service.proto"],
                   check=True, cwd=ROOT / "proto")  # fmt: skip
    _same_tree(tmp_path / "persona" / "v1", PY_OUT, "*_pb2*.py*")


def test_go_code_is_current(go_env: dict[str, str], tmp_path: Path) -> None:
    subprocess.run([str(GO_DIR / "generate.sh"), str(tmp_path)], check=True, env=go_env)
    _same_tree(tmp_path / "personav1", GO_DIR / "personav1", "*.go")


def test_buf_lint_and_breaking() -> None:
    if not BUF.exists():
        pytest.skip("buf not installed: deploy/ensure-tools.sh installs it (npm ci)")
    for args in (["lint"], ["breaking", "--against", "proto/baseline.json"]):
        proc = subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == 0, f"buf {args[0]}:\n{proc.stdout}{proc.stderr}"
