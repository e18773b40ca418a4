"""Model registry: one immutable folder per version, one ACTIVE pointer, a history for rollback.

Layout of ``models/``::

    ACTIVE                 the active version id (replaced atomically: write tmp, os.replace)
    HISTORY.json           versions that were active before, oldest first (rollback pops)
    <version>/             written to a temp folder, renamed into place, files made read-only
        weights.pt         state_dict of `UserEncoder` (training heads are not saved)
        tokenizer.json     `TokenizerConfig`  (loading a model restores exactly its tokenizer)
        model.json         `ModelConfig`
        train.json         objectives and training config
        metrics.json       training metrics
        outcomes.json      the calibrated outcome heads (`encoder/propensity.py`)
        shortterm.npz      the short-term head (`encoder/shortterm.py`), and its parity
        shortterm_parity.jsonl   sample: nearline vector, new events, expected delta
        shortterm_rows_parity.jsonl   the same: nearline vector, the events' rows, delta_rows
        eval.json          evaluation report (may be added once, by `persona eval`)
        parity.jsonl       parity windows: {"now_ms": .., "events": [Event JSON, ...]} a line
        parity.npy         (P, E) float32 vectors the trained model gave them
        MANIFEST.json      sha256 of every file above

Every function here refuses a version name that is not one folder of the registry
(`check_name`: "v" then letters, digits, ".", "_", "-"; no path can leave `models/`), the
ACTIVE pointer's included. Loaders open a version with `open_version`, which also refuses
one whose files no longer match its MANIFEST.json (issue #18); `resolve` does not verify,
so that `persona model show/validate/promote` can still report a tampered version.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.events import Event
from contract.versions import is_version

ACTIVE = "ACTIVE"
HISTORY = "HISTORY.json"
# a version id as the store, the update log and the API take it (contract/versions.py: at
# most 64 characters; a longer registry name could be promoted but never followed), led by v
_NAME = re.compile(r"v[A-Za-z0-9].*")


def _is_name(text: str) -> bool:
    return _NAME.fullmatch(text) is not None and is_version(text)


class RegistryError(RuntimeError):
    pass


def check_name(version: str) -> str:
    """`version` if it names one folder of the registry, else RegistryError ("../x", "/x",
    "v1/../../x" and anything not written by `write_version` are refused)."""
    if not isinstance(version, str) or not _is_name(version):
        raise RegistryError(f"{str(version)[:80]!r} is not a model version name")
    return version


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def versions(models_dir: Path) -> list[str]:
    """Version ids in the registry, oldest first (ids sort by creation time)."""
    if not models_dir.is_dir():
        return []
    # a stray folder ("v1 old", a copy) is not a version: listing it broke `model list`
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and _is_name(p.name))


def active_version(models_dir: Path) -> str | None:
    """The active version id, or None in an empty registry."""
    p = models_dir / ACTIVE
    if not p.exists():
        return None
    v = p.read_text().strip()
    return check_name(v) if v else None


def resolve(models_dir: Path, version: str | None) -> str:
    """`version` if given (must exist, named as `check_name` wants), else the active one."""
    v = version or active_version(models_dir)
    if v is None:
        raise RegistryError(f"no active model in {models_dir}; train one or pass --model")
    if not (models_dir / check_name(v)).is_dir():
        raise RegistryError(f"model version {v!r} not found in {models_dir}")
    return v


def open_version(models_dir: Path, version: str | None) -> str:
    """`resolve`, then the manifest check: what every loader calls before reading a
    version's files (refresh, serve, encode). RegistryError names the files that changed."""
    v = resolve(models_dir, version)
    tampered = verify_manifest(models_dir, v)
    if tampered:
        raise RegistryError(
            f"model version {v} does not match its MANIFEST.json ({', '.join(tampered)}"
            " changed or missing); refusing to load it"
        )
    return v


def read_json(models_dir: Path, version: str, name: str) -> dict[str, Any]:
    p = models_dir / check_name(version) / name
    return json.loads(p.read_text()) if p.exists() else {}


def write_version(
    models_dir: Path,
    state_dict: dict[str, Any],
    texts: dict[str, str],
    parity_windows: Sequence[Sequence[Event]],
    parity_now_ms: Sequence[int],
    parity_vectors: np.ndarray,
    blobs: dict[str, bytes] | None = None,
) -> str:
    """Write a new immutable version (`texts` and binary `blobs` by file name); the first
    one in an empty registry becomes active."""
    import torch

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    weights = buf.getvalue()
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    version = f"v{stamp}-{hashlib.sha256(weights).hexdigest()[:8]}"
    models_dir.mkdir(parents=True, exist_ok=True)
    if (models_dir / version).exists():
        raise RegistryError(f"version {version} already exists")
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=".tmp-"))
    try:
        (tmp / "weights.pt").write_bytes(weights)
        for name, text in texts.items():
            (tmp / name).write_text(text)
        for name, data in (blobs or {}).items():
            (tmp / name).write_bytes(data)
        with (tmp / "parity.jsonl").open("w") as f:
            for w, now in zip(parity_windows, parity_now_ms, strict=True):
                f.write(json.dumps({"now_ms": int(now), "events": [e.to_json_dict() for e in w]}))
                f.write("\n")
        np.save(tmp / "parity.npy", np.asarray(parity_vectors, dtype=np.float32))
        _write_manifest(tmp)
        os.rename(tmp, models_dir / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _freeze(models_dir / version)
    if active_version(models_dir) is None:
        _atomic_write(models_dir / ACTIVE, version + "\n")
    return version


def _write_manifest(folder: Path) -> None:
    files = {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.name != "MANIFEST.json"}
    (folder / "MANIFEST.json").write_text(json.dumps(files, indent=2, sort_keys=True))


def _freeze(folder: Path) -> None:
    for p in folder.iterdir():
        p.chmod(0o444)


def add_report(models_dir: Path, version: str, name: str, payload: dict[str, Any]) -> None:
    """Add a report file (eval.json, validate.json) to a version once; never overwrite weights."""
    folder = models_dir / check_name(version)
    if name in ("weights.pt", "tokenizer.json", "model.json", "parity.npy", "parity.jsonl"):
        raise RegistryError(f"{name} is part of the immutable version")
    try:
        target = folder / name
        if target.exists():
            target.chmod(0o644)
        target.write_text(json.dumps(payload, indent=2, sort_keys=True))
        manifest = folder / "MANIFEST.json"
        files = json.loads(manifest.read_text())
        files[name] = _sha(target)
        manifest.chmod(0o644)
        manifest.write_text(json.dumps(files, indent=2, sort_keys=True))
    finally:
        _freeze(folder)


def verify_manifest(models_dir: Path, version: str) -> list[str]:
    """Files whose content no longer matches the manifest (empty: intact); a missing or
    unreadable manifest is ["MANIFEST.json"], a listed name that is not a plain file name
    of the folder is listed as tampered too."""
    folder = models_dir / check_name(version)
    try:
        files = json.loads((folder / "MANIFEST.json").read_text())
        if not isinstance(files, dict) or not files:
            raise ValueError("not a non-empty object")
    except (OSError, ValueError):
        return ["MANIFEST.json"]
    bad = []
    for n, h in files.items():
        if not isinstance(n, str) or Path(n).name != n or n in ("", ".", ".."):
            bad.append(str(n))
        elif not (folder / n).is_file() or _sha(folder / n) != h:
            bad.append(n)
    return bad


def load_parity(models_dir: Path, version: str) -> tuple[list[list[Event]], list[int], np.ndarray]:
    windows: list[list[Event]] = []
    nows: list[int] = []
    with (models_dir / check_name(version) / "parity.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            nows.append(int(d["now_ms"]))
            windows.append([event_from_json(e) for e in d["events"]])
    return windows, nows, np.load(models_dir / version / "parity.npy")


def event_from_json(d: dict[str, Any]) -> Event:
    props = {str(k): (v if isinstance(v, str) else float(v)) for k, v in d.get("props", {}).items()}
    return Event(str(d["user_id"]), str(d["event_id"]), int(d["ts_ms"]), str(d["type"]), props)


def set_active(models_dir: Path, version: str) -> str | None:
    """Make `version` active in one atomic step; the previous one goes on the history."""
    resolve(models_dir, version)
    prev = active_version(models_dir)
    if prev == version:
        return prev
    hist = _history(models_dir)
    if prev is not None:
        hist.append(prev)
    _atomic_write(models_dir / HISTORY, json.dumps(hist))
    _atomic_write(models_dir / ACTIVE, version + "\n")
    return prev


def rollback(models_dir: Path) -> tuple[str, str]:
    """Re-activate the version active before the current one. Returns (from, to)."""
    hist = _history(models_dir)
    cur = active_version(models_dir)
    if not hist or cur is None:
        raise RegistryError("nothing to roll back to")
    prev = hist.pop()
    open_version(models_dir, prev)  # gone or changed: refused before ACTIVE names it
    _atomic_write(models_dir / HISTORY, json.dumps(hist))
    _atomic_write(models_dir / ACTIVE, prev + "\n")
    return cur, prev


def _history(models_dir: Path) -> list[str]:
    p = models_dir / HISTORY
    return list(json.loads(p.read_text())) if p.exists() else []
