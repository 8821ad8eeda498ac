"""Sharded training (FSDP 2 / DeepSpeed) as the toolkit meets it: was sharding asked for, is it engaged, and the two
places where sharded weights need care (the finiteness check before a save and the full state dict that is saved).

accelerate shards only on accelerators: under an FSDP or DeepSpeed config on CPUs each process reports
``DistributedType.NO`` / ``MULTI_CPU`` and keeps whole parameters, so a launch would quietly run something other than
what its config says. :func:`check_sharding_possible` refuses that before any model is loaded and
:func:`check_sharding_engaged` confirms it from the accelerator itself once the trainer exists.
"""

from __future__ import annotations

import os

import torch
from accelerate.utils import DistributedType


class ShardingNotEngaged(RuntimeError):
    """An FSDP or DeepSpeed run that would train with whole (unsharded) parameters."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def sharding_requested(args) -> str | None:
    """``"FSDP"`` / ``"DeepSpeed"`` when the launch (``accelerate launch`` with such a config sets
    ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``) or the arguments (``--fsdp``, ``--deepspeed``) ask for
    sharding, else ``None``."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or getattr(args, "deepspeed", None):
        return "DeepSpeed"
    if _env_flag("ACCELERATE_USE_FSDP") or getattr(args, "fsdp", None):
        return "FSDP"
    return None


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available()


def _refusal(kind: str, why: str) -> ShardingNotEngaged:
    return ShardingNotEngaged(
        f"This launch asks for {kind} sharding, but {why}, so every process would hold and train the whole model "
        f"(not what the config says). Run on GPUs (or another accelerator) for {kind}; on CPUs launch with "
        "accelerate_configs/cpu.yaml and --use_cpu true (plain data parallel, each process holding the whole model)."
    )


def check_sharding_possible(args) -> None:
    """Before any model is loaded: refuse an FSDP / DeepSpeed request that accelerate cannot honour here (``use_cpu``
    or no accelerator).

    Raises:
        ShardingNotEngaged: sharding was asked for on CPUs.
    """
    kind = sharding_requested(args)
    if kind is None:
        return
    if getattr(args, "use_cpu", False):
        raise _refusal(kind, "use_cpu is set (accelerate shards on accelerators only)")
    if not _accelerator_available():
        raise _refusal(kind, "this machine has no GPU or other accelerator (accelerate shards on accelerators only)")


def check_sharding_engaged(trainer) -> None:
    """Once the trainer (and its accelerator) exists: a sharding request must have become an FSDP or DeepSpeed
    distributed type.

    Raises:
        ShardingNotEngaged: it did not (e.g. a single process that accelerate runs as ``DistributedType.NO``).
    """
    kind = sharding_requested(trainer.args)
    if kind is None:
        return
    engaged = trainer.accelerator.distributed_type
    if engaged not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise _refusal(kind, f"accelerate set this run up as {engaged}")


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any parameter is a ``DTensor`` (FSDP 2's sharded parameters)."""
    # torch.distributed's submodules are imported where used: some torch builds lack them, and only runs that may
    # be sharded call these functions
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding NaN or infinite values, else ``None``.

    Sharded parameters are checked shard by shard (no gather); with a process group, every process learns the
    verdict (an all-reduce), so all of them refuse together instead of some waiting in a collective forever.
    """
    names = [name for name, _ in model.named_parameters()]
    bad = torch.zeros(len(names) + 1, dtype=torch.int32)  # one slot per parameter; the last keeps the tensor non-empty
    for index, (_, param) in enumerate(model.named_parameters()):
        local = _local(param.detach())
        if local.numel() and local.device.type != "meta" and not bool(torch.isfinite(local).all()):
            bad[index] = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized() and is_sharded(model):
        device = "cpu" if torch.distributed.get_backend() == "gloo" else _local(next(model.parameters())).device
        bad = bad.to(device)
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    flagged = torch.nonzero(bad[:-1].cpu()).flatten().tolist()
    return names[flagged[0]] if flagged else None


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the CPU, gathered from FSDP 2 shards (every process must call it; the main
    process gets the tensors, the others an empty dict): what is saved, one plain ``transformers`` checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
