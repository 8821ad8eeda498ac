"""One optimizer step of UnlearnTrainer's loss path with the student and the frozen models sharded by FSDP 2 over
gloo on CPU processes; launched by tests/test_distributed.py as ``torchrun --nproc_per_node 2 fsdp_cpu.py CASES.json``.

accelerate 1.16 does not engage FSDP on CPUs (it reports ``MULTI_CPU``), so this harness does by hand what an FSDP
launch does on GPUs, through the same library functions: accelerate's ``fsdp2_prepare_model`` shards the student
(transformer-block wrapping, as ``accelerate_configs/fsdp.yaml``), and the trainer's own ``setup_frozen_models``
prepares the frozen original / augmented models through TRL's ``prepare_fsdp`` (the trainer is told FSDP is on).
Everything after that is the toolkit's code: ``count_items`` (gathered over the processes), ``compute_loss``, the
model save (:func:`rklu_llm.models.staged_save`: the finiteness check shard by shard, one full state dict).

Each case (a JSON list of ``{"config": UnlearnConfig fields, "model", "data", "items", "lr", "report"}``): the process
of rank r takes items [r * items / 2, (r + 1) * items / 2) of the batch that the single-process run takes whole. Rank 0
writes ``report``: each rank's loss and loss terms, and what was sharded before and after the step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def shard_report(model: torch.nn.Module) -> dict:
    """How many parameters are DTensors and how many elements this process holds of how many."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    dtensors = [p for p in params if isinstance(p, DTensor)]
    return {
        "parameters": len(params),
        "dtensors": len(dtensors),
        "local_numel": sum(p.to_local().numel() for p in dtensors),
        "global_numel": sum(p.numel() for p in dtensors),
    }


def run_case(case: dict, rank: int, world: int) -> dict:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rklu_llm import UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_tofu
    from rklu_llm.data.qa import UnlearnCollator

    tokenizer = AutoTokenizer.from_pretrained(case["model"])
    model = AutoModelForCausalLM.from_pretrained(case["model"], dtype=torch.float32)
    args = UnlearnConfig(**case["config"])
    forget = load_tofu("forget01", case["data"]).select(range(case["items"]))
    retain = load_tofu("retain99", case["data"]).select(range(case["items"])) if args.retain_mode != "none" else None
    dataset = build_unlearning_dataset(tokenizer, forget, retain, None, max_length=args.max_length)
    trainer = UnlearnTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert args.world_size == world, (args.world_size, world)

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        cpu_ram_efficient_loading=False,
        state_dict_type="FULL_STATE_DICT",
    )
    trainer.accelerator.state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True  # what Trainer sets under an FSDP launch: setup_frozen_models takes TRL's path
    student = fsdp2_prepare_model(trainer.accelerator, trainer.model)
    trainer.model = trainer.model_wrapped = student
    trainer.setup_frozen_models()
    frozen = {"original": trainer.ref_model, "augmented": trainer.aug_model}
    report = {
        "student_before": shard_report(student),
        "frozen": {k: shard_report(m) for k, m in frozen.items() if m is not None},
    }

    per_rank = case["items"] // world
    collate = UnlearnCollator(tokenizer.pad_token_id)
    batch = collate([dataset[i] for i in range(rank * per_rank, (rank + 1) * per_rank)])
    counts = trainer.count_items([batch])
    student.train()
    loss = trainer.compute_loss(student, batch, num_items_in_batch=counts)
    terms = {k: float(torch.stack(v).sum()) for k, v in trainer._metrics.items()}
    loss.backward()
    optimizer = torch.optim.SGD(student.parameters(), lr=case["lr"])
    optimizer.step()
    report["student_after"] = shard_report(student)
    report["grad_is_sharded"] = all(
        type(p.grad).__name__ == "DTensor" for p in student.parameters() if p.grad is not None
    )

    trainer.save_model(args.output_dir)  # staged_save: finiteness shard by shard, one full state dict

    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "loss": float(loss.detach()), "terms": terms, **report})
    return {"method": args.method, "retain_mode": args.retain_mode, "ranks": gathered}


def main() -> None:
    import os

    torch.set_num_threads(1)
    cases = json.loads(Path(sys.argv[1]).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results = [run_case(case, rank, world) for case in cases]
    if rank == 0:
        for case, result in zip(cases, results):
            Path(case["report"]).write_text(json.dumps(result, indent=1))
    dist.barrier()


if __name__ == "__main__":
    main()
