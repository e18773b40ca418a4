"""deploy/Dockerfile: hadolint clean, non-root, one file for the CPU and CUDA images, the Go
front built in its own stage."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.go_support import build, go_env
from tests.ops.support import DEPLOY

__all__ = ["go_env"]  # fixture

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


def _front_stage(text: str) -> str:
    (stage,) = [s for s in re.split(r"(?im)^FROM\s", text) if re.match(r"\S+ AS front\b", s)]
    return stage


def test_front_stage_builds_from_the_packages_the_tests_use() -> None:
    """persona-front is built in the image as the tests build it: front/go/build.sh over
    Debian's packaged Go sources, the same packages deploy/ensure-client-tools.sh installs,
    pinned to the versions this (bookworm) machine has where dpkg can say; the runtime stage
    carries the binary and the build context lets its sources in."""
    text = DOCKERFILE.read_text()
    stage = _front_stage(text)
    pins = dict(re.findall(r"\b(golang[\w.-]*)=(\S+)", stage))
    ensure = (DEPLOY / "ensure-client-tools.sh").read_text()
    (listed,) = re.findall(r"GO_PACKAGES=\(([^)]*)\)", ensure)
    assert pins and set(pins) <= set(listed.split()), (pins, listed)
    assert {"golang-go", "golang-google-grpc-dev", "golang-google-protobuf-dev"} <= set(pins)
    if shutil.which("dpkg-query"):
        proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *pins],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        have = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
        for name, version in have.items():
            assert pins[name.split(":")[0]] == version, (name, version)
    assert re.search(r"CGO_ENABLED=0 .*front/go/build\.sh /out/persona-front", stage)
    final = _final_stage(text)
    assert "COPY --from=front /out/persona-front /usr/local/bin/persona-front" in final
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"!front/go/", "!clients/go/"} <= set(ignore)


def test_front_builds_static_without_cgo(go_env: dict[str, str], tmp_path: Path) -> None:
    """The stage's build: without cgo the binary is static (no ELF interpreter), so it runs
    on the slim runtime image that has no Go toolchain; it starts and knows its flags."""
    out = tmp_path / "persona-front"
    proc = build({**go_env, "CGO_ENABLED": "0"}, str(out))
    assert proc.returncode == 0, proc.stderr
    head = out.read_bytes()[:4096]
    assert head[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in head and b"ld-linux" not in head
    usage = subprocess.run([str(out), "-h"], capture_output=True, text=True, timeout=30)
    assert "-upstream" in usage.stderr
