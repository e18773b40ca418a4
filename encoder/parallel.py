"""Where a training run's steps execute: one process (`Local`) or several (`Sharded`).

`Sharded` is TorchRec's `DistributedModelParallel` over the process group that torchrun
(or `persona train --nproc N`) started: the planner shards the EmbeddingCollection's
tables across the ranks, the dense part (Transformer, projection, training heads) is
replicated and data-parallel (DDP), and the tables learn through TorchRec's fused optimizer,
applied inside the backward pass (fbgemm: exact row-wise Adagrad on the CPU, where fbgemm
has no fused Adam; Adam on GPUs unless ``TrainConfig.table_optimizer`` asks for row-wise
Adagrad). gloo on CPU processes, NCCL on GPUs. `Local` runs the same table optimizer
(torchrec's unfused `RowWiseAdagrad`) when the config names it, so a 1-process run and a
sharded one can be compared like for like.

Every rank walks the same batch plan and takes its slice of each batch (`part`), so the
global batch is `TrainConfig.batch_size` whatever the number of ranks, every rank makes
the same number of collective calls, and a run on N ranks takes the steps a 1-process run
takes. The dense gradients are averaged across ranks (DDP); the tables receive the sum of
the ranks' gradients (TorchRec's all-to-all), which Adagrad's and Adam's normalisation
absorb. Gradient clipping covers the dense part only (the fused update happens before the
step). Restoring the best epoch's weights restores the dense optimizer's state, not the
tables' Adagrad accumulators.

Limit: the best epoch's weights and the checkpoint are the full tables, gathered on every
rank (an all-reduce of the disjoint shards). That holds while the tables fit one host's
memory (10 M rows of 128 floats: 5 GB); past that, keep local shards and save them with
`torch.distributed.checkpoint` instead (not built).

Both give the loop the same calls: ``setup`` (optimizer), ``part`` (this rank's examples of
a batch), ``sum`` (across ranks), ``weights`` / ``load_weights`` (the full, unsharded
state), ``opt_state`` / ``load_opt_state`` and ``final`` (a plain `LossModule` with the
trained weights, which is what a version saves: refresh and serving load it unchanged).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from encoder.model import UserEncoder
from encoder.objectives import Batch, TrainingHeads
from encoder.sharded import build_dmp, copy_into_shards


class LossModule(nn.Module):
    """The encoder and its training heads as one module: the forward pass returns the loss
    (DDP must see the heads inside the wrapped forward to average their gradients)."""

    def __init__(self, model: UserEncoder, heads: TrainingHeads, w_prefix: float) -> None:
        super().__init__()
        self.model, self.heads, self.w_prefix = model, heads, w_prefix

    def forward(
        self,
        kjt: Any,
        lengths: torch.Tensor,
        age_h: torch.Tensor,
        batch: Batch,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        h, pad, z, bags = self.model(kjt, lengths, age_h)
        seen = self.model.prefix_counts(pad, bags) if self.w_prefix > 0 else None  # once
        z_prefix = None if seen is None else self.model.prefix_vectors(h, pad, bags, seen)
        counts = None
        if self.heads.residual and bags.counted is not None:
            c_pre = None if seen is None else self.model.prefix_count_features(bags, seen)
            counts = (self.model.count_features(pad, bags), c_pre)
        return self.heads.loss(h, pad, z, batch, gen, z_prefix, counts)


def _groups(named: list[tuple[str, nn.Parameter]], tc: Any) -> list[dict[str, Any]]:
    """AdamW groups: dense weights, and the tables (input and output) at their own rate."""
    is_table = [".ec." in n or n.startswith("ec.") or "value_out" in n for n, _ in named]
    dense = [p for (_, p), t in zip(named, is_table, strict=True) if not t]
    tables = [p for (_, p), t in zip(named, is_table, strict=True) if t]
    groups: list[dict[str, Any]] = [{"params": dense, "lr": tc.lr}]
    if tables:
        lr, decay = tc.lr * tc.table_lr_mult, tc.table_weight_decay
        groups.append({"params": tables, "lr": lr, "weight_decay": decay})
    return groups


def _adamw(named: list[tuple[str, nn.Parameter]], tc: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_groups(named, tc), lr=tc.lr, weight_decay=tc.weight_decay)


def _adagrad_lr(tc: Any) -> float:
    return float(tc.lr * tc.table_lr_mult * tc.adagrad_lr_mult)


def _keep_lrs(opt: Any, state: dict[str, Any]) -> None:
    """Load an optimizer state but keep the current learning rates (the schedule's)."""
    from torchrec.optim.keyed import KeyedOptimizer

    if isinstance(opt, KeyedOptimizer) and not opt.state:
        # torchrec loads in place: make the lazy state with a zero-gradient step first
        # (the weights are put back after it: AdamW's decay moves them even then)
        params = list(opt.params.values())
        kept = [p.detach().clone() for p in params]
        opt.init_state()
        with torch.no_grad():
            for p, k in zip(params, kept, strict=True):
                p.copy_(k)
                p.grad = None
    lrs = [g["lr"] for g in opt.param_groups]
    opt.load_state_dict(copy.deepcopy(state))
    for g, lr in zip(opt.param_groups, lrs, strict=True):
        g["lr"] = lr


class Local:
    """One process: the module itself, AdamW over every parameter."""

    rank, world = 0, 1

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")

    def setup(self, step: LossModule, tc: Any) -> tuple[Any, list[nn.Parameter]]:
        self.step = self.net = step.to(self.device)
        named = list(step.named_parameters())
        self.table_optimizer = tc.table_optimizer
        if tc.table_optimizer == "adamw":
            self.opt = torch.optim.AdamW(_groups(named, tc), lr=tc.lr, weight_decay=tc.weight_decay)
            return self.opt, [p for _, p in named]
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

        tables = {n: p for n, p in named if n.startswith("model.ec.")}
        rest = [(n, p) for n, p in named if n not in tables]
        lr = _adagrad_lr(tc)
        self.opt = CombinedOptimizer(
            [
                KeyedOptimizerWrapper(tables, lambda ps: RowWiseAdagrad(ps, lr=lr)),
                KeyedOptimizerWrapper(dict(rest), lambda _: _adamw(rest, tc)),
            ]
        )
        return self.opt, [p for _, p in named]

    def part(self, idx: np.ndarray) -> np.ndarray | None:
        return idx

    def autocast(self) -> Any:
        """bf16 autocast on GPUs that support it; nothing on the CPU."""
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sum(self, values: list[float]) -> list[float]:
        return values

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.step.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.step.load_state_dict(state)

    def opt_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.opt.state_dict())

    def load_opt_state(self, state: dict[str, Any]) -> None:
        _keep_lrs(self.opt, state)

    def final(self) -> LossModule:
        return self.step


def _full(tensor: Any, pg: Any) -> torch.Tensor:
    """The whole tensor on every rank: row-wise (or any disjoint) shards summed across ranks."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        return tensor.full_tensor().detach().cpu()
    if not isinstance(tensor, ShardedTensor):
        return tensor.detach().cpu().clone()
    with warnings.catch_warnings():  # TorchRec's row-wise tables are ShardedTensors still
        warnings.simplefilter("ignore", FutureWarning)
        out = torch.zeros(tuple(tensor.size()), dtype=tensor.dtype)
    for shard in tensor.local_shards():
        r0, c0 = shard.metadata.shard_offsets[:2]
        r, c = shard.tensor.shape[:2]
        out[r0 : r0 + r, c0 : c0 + c] = shard.tensor.detach().cpu()
    moved = out.to(_pg_device(pg))
    dist.all_reduce(moved, group=pg)
    return moved.cpu()


def _pg_device(pg: Any) -> torch.device:
    if dist.get_backend(pg) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Sharded(Local):
    """Several processes (one per GPU, or CPU processes on gloo): see the module docstring."""

    def __init__(self, device: torch.device | None = None, pg: Any = None) -> None:
        super().__init__(device)
        self.pg = pg or dist.GroupMember.WORLD
        assert self.pg is not None, "init_process_group first"
        self.rank, self.world = dist.get_rank(self.pg), dist.get_world_size(self.pg)

    def setup(self, step: LossModule, tc: Any) -> tuple[Any, list[nn.Parameter]]:
        from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

        logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchrec")
        warnings.filterwarnings("ignore", message=".*find_unused_parameters=true.*")
        self.plain = copy.deepcopy(step)  # what `final` fills with the trained weights
        adagrad = self.device.type == "cpu" or tc.table_optimizer == "rowwise_adagrad"
        self.table_optimizer = "rowwise_adagrad" if adagrad else "adam"
        table_lr = _adagrad_lr(tc) if adagrad else tc.lr * tc.table_lr_mult
        fused: Any = RowWiseAdagrad if adagrad else torch.optim.Adam
        apply_optimizer_in_backward(fused, step.model.ec.parameters(), {"lr": table_lr})
        wrapper = DefaultDataParallelWrapper(find_unused_parameters=True)
        self.dmp = build_dmp(step, self.device, self.pg, data_parallel_wrapper=wrapper)
        self.step, self.net = step, self.dmp
        named = list(in_backward_optimizer_filter(self.dmp.named_parameters()))
        self.dense = KeyedOptimizerWrapper(dict(named), lambda _: _adamw(named, tc))
        self.opt = CombinedOptimizer([self.dmp.fused_optimizer, self.dense])
        return self.opt, [p for _, p in named]

    def part(self, idx: np.ndarray) -> np.ndarray | None:
        """This rank's share of a batch; None (on every rank alike) when a batch is too small
        to give every rank an example."""
        if len(idx) < self.world:
            return None
        return np.array_split(idx, self.world)[self.rank]

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=_pg_device(self.pg))
        dist.all_reduce(t, group=self.pg)
        return [float(v) for v in t.cpu()]

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: _full(v, self.pg) for k, v in self.dmp.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        copy_into_shards(self.dmp.state_dict(), state)

    def opt_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.dense.state_dict())

    def load_opt_state(self, state: dict[str, Any]) -> None:
        _keep_lrs(self.dense, state)

    def final(self) -> LossModule:
        self.plain.load_state_dict(self.weights())
        return self.plain


def from_env(device: str | None = None) -> Sharded | None:
    """In a torchrun worker (``WORLD_SIZE`` > 1 in the environment): join the process group
    (NCCL on GPUs, gloo on the CPU; rendezvous from the ``MASTER_*`` variables) and return
    this rank's `Sharded`. None outside torchrun. `device`: "cpu", "cuda" or None (cuda
    when present). Each CPU rank takes its share of the cores."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Sharded(dev)
