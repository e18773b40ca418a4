"""The Go toolchain of the tests (Debian's Go 1.19 with the packaged grpc-go and protobuf-go
sources, GOPATH mode: no module proxy here) and what it builds for them: `go_env`, and
persona-front (`front/go`) built once a session, `front_bin`. Imported by the conftests and
test modules that need them (tests/clients, tests/front, tests/ops, tests/serving).

The toolchain comes from deploy/ensure-client-tools.sh (`make test` runs it); a test that
needs it skips, saying what is missing, only when it is absent."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "DEBIAN_GOPATH",
    "ENSURE",
    "GO_DIR",
    "GO_IMPORT",
    "build",
    "front_bin",
    "go_env",
    "launch_front",
    "run_front",
    "stop_front",
]

ROOT = Path(__file__).resolve().parents[1]
FRONT_DIR = ROOT / "front" / "go"
GO_DIR = ROOT / "clients" / "go"
GO_IMPORT = "persona/clients/go"  # the go_package prefix of proto/persona/v1
DEBIAN_GOPATH = Path("/usr/share/gocode")
ENSURE = "deploy/ensure-client-tools.sh (run by `make test`; apt-get and npm)"


def _go_missing() -> str | None:
    for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed: {ENSURE} installs Debian's Go toolchain"
    src = DEBIAN_GOPATH / "src"
    if not (src / "google.golang.org" / "grpc").is_dir():
        return f"grpc-go sources missing under {DEBIAN_GOPATH}: {ENSURE} (golang-google-grpc-dev)"
    if not (src / "github.com" / "golang" / "protobuf" / "proto" / "registry.go").is_file():
        return (
            f"github.com/golang/protobuf under {DEBIAN_GOPATH} is 1.3 (cannot decode "
            f"protoc-gen-go 1.28 messages): {ENSURE} (golang-github-golang-protobuf-1-5-dev)"
        )
    return None


@pytest.fixture(scope="session")
def go_env() -> dict[str, str]:
    """GOPATH mode over Debian's packaged sources: clients/go appears at its import path
    in a GOPATH of its own (clients/go/.gopath, git-ignored), beside /usr/share/gocode."""
    why = _go_missing()
    if why:
        pytest.skip(why)
    gopath = GO_DIR / ".gopath"
    link = gopath / "src" / GO_IMPORT
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(GO_DIR, target_is_directory=True)
    return {
        **os.environ,
        "GOPATH": f"{gopath}:{DEBIAN_GOPATH}",
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOCACHE": str(gopath / "cache"),
        "GRPC_GO_RETRY": "on",  # grpc-go < 1.40 applies service-config retries only so
    }


def build(go_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """front/go/build.sh (GOPATH mode over Debian's packaged sources) with `args`."""
    return subprocess.run([str(FRONT_DIR / "build.sh"), *args], env=go_env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="session")
def front_bin(go_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("front") / "persona-front"
    proc = build(go_env, str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def run_front(
    front_bin: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """persona-front run to its end (`-print-settings`, a refused start) in this process's
    environment without its PERSONA_* variables, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    return subprocess.run([str(front_bin), *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def launch_front(
    front_bin: Path,
    upstream_port: int,
    store: str,
    *flags: str,
    stderr: int = subprocess.PIPE,
    env: dict[str, str] | None = None,
    startup_s: float = 60.0,
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """persona-front started on a free port before 127.0.0.1:`upstream_port` and `store`:
    (the process, its startup line as JSON: listen, metrics, ...). A front that exits, or
    prints no line within `startup_s`, is stopped and fails the test; the caller stops the
    one it gets (`stop_front`). env: the whole environment (default this process's)."""
    proc = subprocess.Popen(
        [str(front_bin), "-listen", "127.0.0.1:0", "-upstream", f"127.0.0.1:{upstream_port}",
         "-store", store, *flags],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], startup_s)
        line = proc.stdout.readline() if ready else ""
        if line:
            return proc, json.loads(line)
    except BaseException:
        stop_front(proc)
        raise
    raise AssertionError(f"persona-front printed no startup line: {stop_front(proc)}")


def stop_front(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, wait (kill after 10 s), its pipes read and closed: its stderr when piped
    (read while it stops, so a chatty front cannot block on a full pipe). Call it once."""
    if proc.poll() is None:
        proc.terminate()
    try:
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
    finally:
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()
    return err or ""
