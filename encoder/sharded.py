"""The sharded twin of `UserEncoder`: its EmbeddingCollection split row-wise across ranks.

`shard_model` plans every table ROW_WISE with TorchRec's planner, wraps the module in
`DistributedModelParallel` (the dense Transformer is replicated) and copies the unsharded
weights into the shards, so the sharded module computes the same vectors as the plain one.
It runs wherever a process group does: gloo on CPU processes (tests), NCCL on GPUs.

Example, in each of 2 processes after ``dist.init_process_group("gloo", ...)``::

    dmp = shard_model(model, torch.device("cpu"))
    z = encode_sharded(dmp, model.keys, tokenizer.encode(my_windows, now_ms))  # (b, E)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from encoder.model import UserEncoder, make_kjt
from encoder.tokenizer import TokenBatch


def copy_into_shards(local: dict[str, Any], full: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into this rank's shards (ShardedTensor / DTensor) or plain tensors."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    for name, tensor in local.items():
        src = full[name].detach()
        if isinstance(tensor, ShardedTensor):
            for shard in tensor.local_shards():
                r0, c0 = shard.metadata.shard_offsets[:2]
                r, c = shard.tensor.shape[:2]
                shard.tensor.copy_(src[r0 : r0 + r, c0 : c0 + c])
        elif isinstance(tensor, DTensor):
            loc = tensor.to_local()
            for shard, off in zip(loc.local_shards(), loc.local_offsets(), strict=True):  # type: ignore[attr-defined]
                r, c = shard.shape[:2]
                shard.copy_(src[off[0] : off[0] + r, off[1] : off[1] + c])
        elif isinstance(tensor, torch.Tensor):
            with torch.no_grad():
                tensor.copy_(src)


def build_dmp(
    module: nn.Module,
    device: torch.device,
    pg: Any,
    constraints: dict[str, Any] | None = None,
    data_parallel_wrapper: Any = None,
) -> Any:
    """TorchRec's planner shards `module`'s EmbeddingCollection tables over `pg` (per-table
    `constraints` if given); returns `module` wrapped in `DistributedModelParallel`. Shared
    by `shard_model` (inference) and `encoder.parallel.Sharded` (training)."""
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.types import ShardingEnv

    sharders: list[Any] = [EmbeddingCollectionSharder()]
    topology = Topology(world_size=dist.get_world_size(pg), compute_device=device.type)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    return DistributedModelParallel(
        module=module,
        device=device,
        plan=planner.collective_plan(module, sharders, pg),
        sharders=sharders,
        env=ShardingEnv.from_process_group(pg),
        data_parallel_wrapper=data_parallel_wrapper,
    )


def shard_model(
    model: UserEncoder, device: torch.device, pg: dist.ProcessGroup | None = None
) -> nn.Module:
    """Row-wise shard `model`'s tables over the process group; returns the DMP module."""
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType

    pg = pg or dist.GroupMember.WORLD
    assert pg is not None, "init_process_group first"
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    constraints = {
        f"t_{k}": ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value])
        for k in model.keys
    }
    dmp = build_dmp(model, device, pg, constraints)
    copy_into_shards(dmp.state_dict(), full)
    return dmp.eval()


def encode_sharded(dmp: nn.Module, keys: tuple[str, ...], batch: TokenBatch) -> torch.Tensor:
    """This rank's windows through the sharded model. Every rank must call it (collectives)."""
    device = next(p.device for p in dmp.parameters())
    kjt = make_kjt(batch, keys, device)
    with torch.no_grad():
        lengths = torch.from_numpy(batch.lengths).to(device)
        _, _, z, _ = dmp(kjt, lengths, torch.from_numpy(batch.age_h).to(device))  # (b, E)
    return z
