"""Write the three locks from pyproject.toml: `make lock` (or `python deploy/lock.py`).

- `requirements.lock`      runtime, CPU builds (torch +cpu, fbgemm-gpu-cpu, faiss-cpu);
- `requirements-gpu.lock`  runtime, CUDA builds (torch from PyPI, fbgemm-gpu, faiss-gpu-cu12):
                           the same set with the kernels and the index swapped, never both;
- `requirements-dev.lock`  the development tools (pytest, ruff, mypy, ...), on top of either.

Each holds every package of its set, pinned, with the sha256 of the file that Linux x86_64
CPython 3.11 installs, so it is installed with `pip install --no-deps --require-hashes -r
LOCK`. `--no-deps` because the set is already whole, and because torchrec's metadata asks
for the CUDA `fbgemm-gpu` even on a CPU machine (ENVIRONMENT.md): torchrec is resolved
without its dependencies (`[tool.persona.lock] no-deps`), its needs are listed in
`dependencies` instead.

What is resolved: `[project] dependencies` + the `cpu` or `gpu` extra (+ `dev` for the dev
lock). pip itself resolves (`pip install --dry-run --report`), with the versions already in
the locks as constraints, so re-locking after adding one pin moves nothing else;
`--upgrade` drops them. The GPU set is resolved against PyPI alone (this machine's pip
config adds a folder with the CPU torch wheel, which would win otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {
    "cpu": ROOT / "requirements.lock",
    "gpu": ROOT / "requirements-gpu.lock",
    "dev": ROOT / "requirements-dev.lock",
}
HEADER = """\
# {what}
# Linux x86_64, CPython 3.11. Made by `make lock` (deploy/lock.py) from pyproject.toml; do
# not edit. Install: pip install --no-deps --require-hashes -r {name}{extra}
"""
WHAT = {
    "cpu": "Persona runtime, CPU builds: every package, pinned, with its sha256.",
    "gpu": "Persona runtime, CUDA builds (torch, fbgemm-gpu, faiss-gpu-cu12): every package.",
    "dev": "Persona development tools, installed beside requirements.lock (or -gpu.lock).",
}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", re.M)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(path: Path) -> dict[str, str]:
    return {norm(n): v for n, v in PIN.findall(path.read_text())} if path.exists() else {}


def resolve(
    reqs: list[str], constraints: dict[str, str], pypi_only: bool, no_deps: bool
) -> list[dict]:
    """pip's resolution of `reqs` for this interpreter: [{name, version, sha256}]."""
    with tempfile.TemporaryDirectory() as tmp:
        cons = Path(tmp, "constraints.txt")
        cons.write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
        report = Path(tmp, "report.json")
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--quiet", "--report", str(report), "-c", str(cons), *reqs]  # fmt: skip
        if no_deps:
            argv.insert(4, "--no-deps")
        env = dict(os.environ)
        if pypi_only:
            env.pop("PIP_FIND_LINKS", None)
            env["PIP_CONFIG_FILE"] = os.devnull
        subprocess.run(argv, check=True, env=env)
        items = json.loads(report.read_text())["install"]
    out = []
    for item in items:
        info = item["download_info"]
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if sha is None:  # a local file without a recorded hash
            path = Path(unquote(urlparse(info["url"]).path))
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        meta = item["metadata"]
        out.append({"name": meta["name"], "version": meta["version"], "sha256": sha})
    return out


def write(kind: str, entries: list[dict]) -> None:
    path = LOCKS[kind]
    extra = " -r requirements-dev.lock" if kind == "dev" else ""
    name = "requirements.lock" if kind == "dev" else path.name
    text = HEADER.format(what=WHAT[kind], name=name, extra=extra)
    for e in sorted(entries, key=lambda e: norm(e["name"])):
        text += f"{e['name']}=={e['version']} \\\n    --hash=sha256:{e['sha256']}\n"
    path.write_text(text)
    print(f"{path.name}: {len(entries)} packages", file=sys.stderr)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kinds", nargs="*", metavar="KIND", help="cpu, gpu, dev (default: all)")
    ap.add_argument("--upgrade", action="store_true", help="ignore the versions in the locks")
    args = ap.parse_args(argv)
    args.kinds = args.kinds or list(LOCKS)
    if set(args.kinds) - set(LOCKS):
        ap.error(f"KIND is one of {', '.join(LOCKS)}")
    proj = project()
    deps = proj["project"]["dependencies"]
    extras = proj["project"]["optional-dependencies"]
    no_deps = proj["tool"]["persona"]["lock"]["no-deps"]
    keep = {} if args.upgrade else {k: pins(p) for k, p in LOCKS.items()}
    if "cpu" in args.kinds or "dev" in args.kinds:
        runtime = resolve(deps + extras["cpu"], keep.get("cpu", {}), False, False)
        runtime += resolve(no_deps, {}, False, True)
        if "cpu" in args.kinds:
            write("cpu", runtime)
        if "dev" in args.kinds:
            fixed = keep.get("cpu", {}) | keep.get("dev", {})
            fixed |= {norm(e["name"]): e["version"] for e in runtime}
            everything = resolve(deps + extras["cpu"] + extras["dev"], fixed, False, False)
            ours = {norm(e["name"]) for e in runtime}
            write("dev", [e for e in everything if norm(e["name"]) not in ours])
    if "gpu" in args.kinds:
        shared = {n: v.split("+")[0] for n, v in (keep.get("gpu") or keep.get("cpu", {})).items()}
        shared = {n: v for n, v in shared.items() if n not in {"fbgemm-gpu-cpu", "faiss-cpu"}}
        gpu = resolve(deps + extras["gpu"], shared, True, False)
        gpu += resolve(no_deps, {}, True, True)
        write("gpu", gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
