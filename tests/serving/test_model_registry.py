"""The model registry refuses what it must not load (issue #18 item 4): a version name that
leaves the registry, and a version whose files no longer match its manifest, seen from
`persona serve --dim 0` (which reads the active model's dimension). Versions here are
written by hand (files + MANIFEST.json), as `write_version` lays them out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from encoder import registry
from services.cli import parse
from services.cli.serve_cmds import serve_config

V = "v20261201000000-0123abcd"


def _version(models: Path, name: str = V, out_dim: int = 32) -> Path:
    folder = models / name
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"out_dim": out_dim}))
    (folder / "weights.pt").write_bytes(b"weights")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    (folder / "MANIFEST.json").write_text(json.dumps(files))
    (models / registry.ACTIVE).write_text(name + "\n")
    return folder


@pytest.mark.parametrize(
    "name", ["../outside", "/etc", "v1/../../outside", "v1/x", "..", "", "x1", "v" + "1" * 200]
)
def test_a_version_name_cannot_leave_the_registry(tmp_path: Path, name: str) -> None:
    models = tmp_path / "models"
    _version(models)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "model.json").write_text("{}")
    for call in (
        lambda: registry.resolve(models, name or "x"),
        lambda: registry.read_json(models, name, "model.json"),
        lambda: registry.verify_manifest(models, name),
        lambda: registry.open_version(models, name or "x"),
    ):
        with pytest.raises(registry.RegistryError, match="not a model version name"):
            call()
    (models / registry.ACTIVE).write_text("../outside\n")  # the pointer itself
    with pytest.raises(registry.RegistryError, match="not a model version name"):
        registry.active_version(models)


def test_a_tampered_version_is_refused_by_loaders_and_reported_by_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    folder = _version(models)
    assert registry.open_version(models, None) == V and registry.verify_manifest(models, V) == []
    monkeypatch.setenv("PERSONA_MODELS", str(models))
    monkeypatch.delenv("PERSONA_DIM", raising=False)  # 0: the active model's out_dim
    assert serve_config(parse(["serve"])).dim == 32
    (folder / "model.json").write_text(json.dumps({"out_dim": 33}))
    assert registry.verify_manifest(models, V) == ["model.json"]
    assert registry.resolve(models, V) == V  # names only: `model show` still reports it
    with pytest.raises(registry.RegistryError, match=r"model\.json changed or missing"):
        registry.open_version(models, V)
    with pytest.raises(SystemExit, match=r"does not match its MANIFEST\.json"):
        serve_config(parse(["serve"]))  # before issue #18: served dim 33 without a word
    (folder / "MANIFEST.json").write_text("[]")
    assert registry.verify_manifest(models, V) == ["MANIFEST.json"]
    (folder / "MANIFEST.json").write_text(json.dumps({"../../x": "0"}))
    assert registry.verify_manifest(models, V) == ["../../x"]
