"""What every loss term is divided by, and the per-item metrics the trainer logs.

A loss term is a sum over its items (answer tokens, or sequences / classifier samples) divided by the number of those
items in the whole accumulated batch, so that ``per_device_train_batch_size 8`` and ``4 x gradient_accumulation_steps
2`` give the same gradient. :func:`count_items` counts every batch group (``forget`` / ``retain`` / ``refusal``) over
the micro-batches of one optimizer step (the trainer's ``num_items_in_batch``); :func:`normaliser` reads a term's
divisor from those counts. :class:`LoggedMetrics` accumulates logged values as (sum, number of items).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from .losses import answer_mask

#: ``{group: {"tokens": n, "sequences": m}}``, the item counts of one optimizer step (see :func:`count_items`)
Counts = dict[str, dict[str, torch.Tensor]]


def count(batch: dict, kind: str) -> torch.Tensor:
    """Answer tokens (``kind="tokens"``: targets after the shift) or sequences of one micro-batch group; a classifier
    sample is one sequence."""
    labels = batch["labels"]
    if kind == "tokens" and labels.dim() > 1:
        return answer_mask(labels).sum()
    return torch.tensor(labels.shape[0], device=labels.device)


def count_items(batch_samples: list[dict], gather: Callable | None = None, processes: int = 1) -> Counts | None:
    """``{group: {"tokens": n, "sequences": m}}``: answer tokens and sequences of each group over ``batch_samples``
    (the micro-batches of one optimizer step), summed over processes (``gather``, e.g. ``accelerator.gather``, when
    the counts are averaged across devices) and divided by their number ``processes``.

    Dividing a loss summed over this process's items by that share, then letting DDP average the gradients over the
    processes, gives the gradient of the mean over the whole global batch.
    """
    if not batch_samples:
        return None
    groups = list(batch_samples[0])
    counts = torch.stack(
        [
            torch.stack(
                [
                    sum(count(b[g], "tokens") for b in batch_samples),
                    sum(count(b[g], "sequences") for b in batch_samples),
                ]
            )
            for g in groups
        ]
    ).float()
    if gather is not None:
        counts = gather(counts.unsqueeze(0)).sum(0)
    share = counts / processes
    return {g: {"tokens": share[i, 0], "sequences": share[i, 1]} for i, g in enumerate(groups)}


def normaliser(counts: Counts | None, group: str, kind: str, batch: dict) -> torch.Tensor:
    """The divisor of a summed loss term: the accumulated count from :func:`count_items`, or this micro-batch's own
    count when none is given (a direct ``compute_loss`` call: plain means)."""
    if isinstance(counts, dict) and group in counts:
        return counts[group][kind]
    return count(batch, kind)


class LoggedMetrics(defaultdict):
    """Logged metrics, each accumulated as ``name -> [(sum over a micro-batch's items, their number), ...]`` and
    logged as sum / number over the logging window and all processes."""

    def __init__(self):
        super().__init__(list)

    def record(self, name: str, total: torch.Tensor, items: torch.Tensor) -> None:
        self[name].append(torch.stack([total.detach().float().reshape(()), items.float().to(total.device)]))

    def averages(self, gather: Callable) -> dict[str, float]:
        """Every metric's sum / number over all processes (``gather``: ``accelerator.gather``); then cleared."""
        logs = {}
        for name, values in self.items():
            total, items = gather(torch.stack(values).sum(0).unsqueeze(0)).sum(0).tolist()
            logs[name] = total / items if items else 0.0
        self.clear()
        return logs
