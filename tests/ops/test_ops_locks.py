"""The locks (deploy/lock.py) and what installs them: the Makefile and the image.

- every line of every lock is pinned with a sha256; runtime and development sets are apart;
- each runtime lock is a whole set: every dependency of every package in it is in it (read
  from the installed metadata), save torchrec's CUDA fbgemm-gpu, which the locks leave out on
  purpose; the CPU and GPU locks differ only in the kernel, index and CUDA packages;
- the Dockerfile installs the runtime locks only, with --no-deps --require-hashes, and its
  CPU install line, run here as a dry run, finds every file with the hash the lock names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.ops.support import DEPLOY, ROOT

CPU, GPU, DEV = (
    ROOT / n for n in ("requirements.lock", "requirements-gpu.lock", "requirements-dev.lock")
)
ENTRY = re.compile(r"^([A-Za-z0-9._-]+)==(\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", re.M)
LEFT_OUT = {("torchrec", "fbgemm-gpu")}  # deploy/lock.py: torchrec is locked with --no-deps
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$|fbgemm-gpu$|faiss-gpu)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(path: Path) -> dict[str, str]:
    text = path.read_text()
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    found = ENTRY.findall(text)
    assert len(found) * 2 == len(body), f"{path.name}: a line without its pin and hash"
    return {norm(n): v for n, v, _ in found}


def test_every_package_pinned_with_a_hash_and_sets_apart() -> None:
    cpu, gpu, dev = entries(CPU), entries(GPU), entries(DEV)
    assert not set(dev) & set(cpu), "a package in both the runtime and the dev lock"
    assert not {"pytest", "ruff", "mypy", "hypothesis", "import-linter"} & (set(cpu) | set(gpu))
    assert {"fbgemm-gpu-cpu", "faiss-cpu"} <= set(cpu) and cpu["torch"].endswith("+cpu")
    assert not {"fbgemm-gpu-cpu", "faiss-cpu"} & set(gpu)
    assert {"fbgemm-gpu", "faiss-gpu-cu12"} <= set(gpu) and "+" not in gpu["torch"]
    assert {n for n in set(gpu) - set(cpu) if not CUDA_ONLY.match(n)} == set()
    shared = set(cpu) & set(gpu) - {"torch"}
    assert {n: (cpu[n], gpu[n]) for n in shared if cpu[n] != gpu[n]} == {}


def test_pyproject_pins_are_what_the_locks_hold() -> None:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cpu, gpu, dev = entries(CPU), entries(GPU), entries(DEV)
    for spec, lock in (
        *((s, cpu) for s in proj["dependencies"] + proj["optional-dependencies"]["cpu"]),
        *((s, gpu) for s in proj["optional-dependencies"]["gpu"]),
        *((s, {**cpu, **dev}) for s in proj["optional-dependencies"]["dev"]),
    ):
        req = Requirement(spec)
        assert norm(req.name) in lock, f"{spec} is not in its lock: run make lock"
        assert req.specifier.contains(lock[norm(req.name)].split("+")[0]), (
            spec,
            lock[norm(req.name)],
        )


def test_runtime_lock_is_a_whole_set() -> None:
    cpu = entries(CPU)
    env = {"extra": ""}
    missing = []
    for name in cpu:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} of requirements.lock is not installed here: make install")
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if norm(req.name) not in cpu and (name, norm(req.name)) not in LEFT_OUT:
                missing.append(f"{name} -> {spec}")
    assert missing == []


def _run_lines(dockerfile: str) -> list[str]:
    joined = dockerfile.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.startswith("RUN ")]


def test_image_installs_the_runtime_locks_only() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "requirements-dev.lock" not in text
    assert "requirements-dev.lock" not in (DEPLOY / "Dockerfile.dockerignore").read_text()
    installs = [
        cmd for line in _run_lines(text) for cmd in re.split(r"&&|;", line) if "pip install" in cmd
    ]
    from_locks = [c for c in installs if " -r " in c]
    assert {re.search(r"-r (\S+)", c).group(1) for c in from_locks} == {  # type: ignore[union-attr]
        "requirements.lock",
        "requirements-gpu.lock",
    }
    for c in from_locks:
        assert "--no-deps" in c and "--require-hashes" in c, c
    for c in installs:  # the rest installs this repository's own packages, nothing from an index
        if c not in from_locks:
            assert "--no-deps" in c and re.search(r"install[^\n]* \./clients/python \.", c), c


@pytest.mark.slow
def test_the_images_cpu_install_line_resolves_against_the_lock(tmp_path: Path) -> None:
    """The Dockerfile's CPU pip line, as a dry run with this interpreter: every file it would
    install is found with the hash the lock names (pip checks them in a dry run too). The
    PyTorch CPU index is left out: here the same torch wheel comes from the local wheels."""
    (line,) = [c for c in re.split(r"&&|;|then|elif|else|fi", " ".join(_run_lines(
        (DEPLOY / "Dockerfile").read_text()))) if "-r requirements.lock" in c]  # fmt: skip
    argv = shlex.split(line.strip())
    pip_at = argv.index("install")
    args = argv[pip_at + 1 :]
    if "--extra-index-url" in args:
        i = args.index("--extra-index-url")
        del args[i : i + 2]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})  # fmt: skip
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING: Location")]
    assert proc.returncode == 0, "\n".join(errors[-20:])
