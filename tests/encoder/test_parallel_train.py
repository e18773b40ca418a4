"""Training on 2 CPU processes (gloo, DistributedModelParallel) against 1 process, and
resuming a run from its checkpoint."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.synthetic import SyntheticConfig, generate
from encoder.train import TrainSpec, train

WORLD = 2
_WORLD = SyntheticConfig(users=300, events_per_user=40.0, seed=5, items=400, campaigns=48)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spec(tiny: TrainSpec) -> TrainSpec:
    tc = replace(
        tiny.train,
        epochs=4,
        batch_size=32,
        lr=5e-3,
        min_val_users=10,
        table_optimizer="rowwise_adagrad",  # what the sharded CPU run uses: like for like
    )
    return replace(tiny, train=tc)


def _rank(rank: int, port: int, out: str, spec: TrainSpec) -> None:
    import torch.distributed as dist

    from encoder.parallel import Sharded
    from encoder.release import train_version

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        ds = generate(_WORLD)
        where = Sharded(torch.device("cpu"))
        version, metrics = train_version(
            ds.events, spec, Path(out) / "models", ds.config.end_ms, parity_n=32, parallel=where
        )
        if rank == 0:
            (Path(out) / "result.json").write_text(json.dumps({"version": version, **metrics}))
    finally:
        dist.destroy_process_group()


def _quality(enc_fn, event_types) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from encoder.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(users=240, events_per_user=40.0, folds=3, max_events=64, world=_WORLD)
    return dict(evaluate(enc_fn, cfg, event_types)["embedding"])


@pytest.mark.slow
def test_two_processes_match_one(tiny_spec: TrainSpec, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from encoder.api import Encoder
    from encoder.release import parity_check
    from services.refresh.encoders import EncoderCache

    spec = _spec(tiny_spec)
    ds = generate(_WORLD)
    one = train(ds.events, spec, ds.config.end_ms)
    q1 = _quality(Encoder.from_model(one.model).encode, one.tokenizer.event_types)

    mp.spawn(_rank, args=(_free_port(), str(tmp_path), spec), nprocs=WORLD, join=True)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["processes"] == WORLD and res["steps"] > 0
    assert res["table_optimizer"] == one.metrics["table_optimizer"] == "rowwise_adagrad"
    assert res["loss_last"] < res["loss_first"], res
    models = tmp_path / "models"
    # what refresh and serving load: the version from disk, reproducing its parity sample
    enc = EncoderCache(models).get(res["version"])
    assert parity_check(models, res["version"]).ok
    q2 = _quality(enc.encode, enc.tokenizer.config.event_types)
    msg = f"1 process {q1}\n2 processes {q2}"
    # Within the noise of this tiny model on 300 users. 1-process runs, seeds 0-3: AUC
    # converts 0.746-0.767, churns 0.793-0.815, precision@10 0.29-0.54 (the lookalike
    # ranking of a 4-epoch model is that noisy; random lookalikes score about 0.1).
    for key in ("auc_churns", "auc_converts"):
        assert abs(q2[key] - q1[key]) < 0.04, msg
    assert q2["precision_at_10"] > 0.2, msg


class _Stop(Exception):
    pass


def test_resume_repeats_an_uninterrupted_run(
    tiny_spec: TrainSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from encoder import checkpoint

    spec = replace(tiny_spec, train=replace(tiny_spec.train, epochs=3, min_val_users=5))
    ds = generate(SyntheticConfig(users=120, events_per_user=30.0, seed=3))
    end = ds.config.end_ms
    whole = train(ds.events, spec, end)

    save = checkpoint.Checkpoint.save

    def save_then_die(self, *a):  # type: ignore[no-untyped-def]
        save(self, *a)
        raise _Stop  # the process dies right after epoch 1's checkpoint

    monkeypatch.setattr(checkpoint.Checkpoint, "save", save_then_die)
    with pytest.raises(_Stop):
        train(ds.events, spec, end, checkpoint_dir=tmp_path)
    monkeypatch.setattr(checkpoint.Checkpoint, "save", save)
    resumed = train(ds.events, spec, end, checkpoint_dir=tmp_path)

    assert resumed.metrics["epochs_run"] == whole.metrics["epochs_run"]
    assert resumed.metrics["validation_loss"] == whole.metrics["validation_loss"]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), atol=1e-5, err_msg=k)

    other = replace(spec, train=replace(spec.train, seed=9))
    with pytest.raises(ValueError, match="another run's checkpoint"):
        train(ds.events, other, end, checkpoint_dir=tmp_path)


@pytest.mark.slow
def test_persona_train_nproc_2_writes_a_version_and_resumes(tmp_path: Path) -> None:
    """The command line: torchrun starts 2 ranks, rank 0 writes the version; the same
    command again finds the finished run's checkpoint and trains no further step; the runs
    leave nothing in the temp dir (torchrun's log directory is the parent's, removed)."""
    import os
    import subprocess
    import sys

    models, ckpt, tmp = tmp_path / "models", tmp_path / "ckpt", tmp_path / "tmp"
    tmp.mkdir()
    cmd = [sys.executable, "-m", "services.cli", "train", "--synthetic", "--users", "150"]
    cmd += ["--epochs", "1", "--nproc", "2", "--quiet"]
    cmd += ["--models", str(models), "--checkpoint-dir", str(ckpt)]
    env = {**os.environ, "TMPDIR": str(tmp)}
    runs = [
        subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env) for _ in range(2)
    ]
    versions = []
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
        lines = r.stdout.split()
        assert len(lines) == 1, r.stdout  # one version id, printed by rank 0 only
        versions.append(lines[0])
    assert not [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor")]
    first, again = (json.loads((models / v / "metrics.json").read_text()) for v in versions)
    assert first["processes"] == 2 and first["steps"] > 0
    assert "resuming from" not in runs[0].stderr and "resuming from" in runs[1].stderr
    assert first["steps_resumed"] == 0
    assert again["steps"] == first["steps"] == again["steps_resumed"]  # no step trained again
    assert again["validation_loss"] == first["validation_loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_training_steps_in_bf16_and_saves_a_cpu_model(tiny_spec: TrainSpec) -> None:
    from encoder.parallel import Local

    spec = replace(tiny_spec, train=replace(tiny_spec.train, max_steps=5))
    ds = generate(SyntheticConfig(users=60, events_per_user=20.0, seed=4))
    where = Local(torch.device("cuda"))
    out = train(ds.events, spec, ds.config.end_ms, parallel=where)
    assert out.metrics["steps"] == 5
    assert next(out.model.parameters()).device.type == "cpu"  # what a version saves
