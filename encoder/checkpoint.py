"""A training run's state after each epoch, so a stopped run (or a lost rank) resumes there.

What is saved (one file, ``<dir>/train.ckpt``, replaced atomically by rank 0 after every
epoch): the full unsharded weights, the dense optimizer's state, the schedule (step, scale,
cuts), the best epoch so far, the loss histories and whether training has stopped. The
run's randomness is drawn per epoch from the seed (`_Run.epoch_seed`), so a resumed run
takes the same batches as one that never stopped. What is not saved: the fused tables'
Adagrad accumulators of a sharded run (they restart at zero on resume).

A checkpoint belongs to one run: the spec, the example count and the process count are its
key, and a different run refuses it with an error instead of mixing two runs' weights.
Every rank reads the file on resume, so with several machines ``<dir>`` is a shared path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from encoder.fitting import BestEpoch


@dataclass
class Progress:
    """How far the loop is: epochs done, losses, the best epoch, whether it stopped (why)."""

    stop: str
    epochs_run: int = 0
    done: bool = False
    history: list[float] = field(default_factory=list)
    val_history: list[float] = field(default_factory=list)
    best: BestEpoch | None = None


class Checkpoint:
    def __init__(self, directory: Path, spec: Any, world: int, examples: int) -> None:
        self.path = Path(directory) / "train.ckpt"
        d = asdict(spec)
        d["train"].pop("progress", None)
        text = json.dumps([d, world, examples], sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()

    def save(self, state: Progress, where: Any, sched: Any) -> None:
        """Every rank calls it (gathering the weights is collective); rank 0 writes."""
        weights, opt = where.weights(), where.opt_state()
        if where.rank != 0:
            return
        best = state.best
        blob = {
            "key": self.key,
            "epochs_run": state.epochs_run,
            "done": state.done,
            "stop": state.stop,
            "history": state.history,
            "val_history": state.val_history,
            "weights": weights,
            "opt": opt,
            "sched": {"step": sched.step, "scale": sched.scale, "cuts": sched.cuts},
            "best": None if best is None else (best.loss, best.epoch, best.weights, best.opt_state),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save(blob, tmp)
        os.replace(tmp, self.path)

    def resume(self, state: Progress, where: Any, sched: Any) -> bool:
        """Load the saved state into `state`, the model, optimizer and schedule; False when
        there is no checkpoint yet. Raises ValueError for another run's checkpoint."""
        if not self.path.exists():
            return False
        blob = torch.load(self.path, map_location="cpu", weights_only=False)
        if blob.get("key") != self.key:
            raise ValueError(
                f"{self.path} is another run's checkpoint (spec, data or process count "
                "differ): remove it or choose another checkpoint directory"
            )
        where.load_weights(blob["weights"])
        where.load_opt_state(blob["opt"])
        sched.step, sched.scale, sched.cuts = (blob["sched"][k] for k in ("step", "scale", "cuts"))
        state.epochs_run, state.done, state.stop = blob["epochs_run"], blob["done"], blob["stop"]
        state.history, state.val_history = blob["history"], blob["val_history"]
        if blob["best"] is not None:
            state.best = BestEpoch(*blob["best"])
        return True
