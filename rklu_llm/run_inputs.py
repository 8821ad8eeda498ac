"""The trainer's inputs, checked before any training: the kind of batch (causal-LM or classifier), the dataset and the
collator, the data a method needs (retain set, refusals), the model, the output folder and the launch.

A classifier (a `ClassificationUnlearnDataset` of inputs and class labels) is one more kind of batch: it is checked
and prepared by :func:`prepare_classifier` (one forward pass on two forget samples).
"""

from __future__ import annotations

import os

import torch

from .classifiers import check_logits_shape, classifier_logits, reinitialize, takes_keywords
from .data.classification import ClassificationCollator, ClassificationUnlearnDataset
from .data.qa import ForgetRetainDataset, UnlearnCollator
from .frozen import is_peft
from .methods import METHODS
from .models import check_causal_lm, check_output_dir


def checked_inputs(model, args, train_dataset, processing_class, data_collator) -> tuple[str, object, object]:
    """``(task, train_dataset, data_collator)`` of a run, ``task`` "lm" or "classifier"; raises (with the fix) on a
    method for the other kind of model, a missing tokenizer, retain set or refusals, a model without an LM head, an
    output folder that is the model's own, or processes that would each train alone."""
    task = "classifier" if isinstance(train_dataset, ClassificationUnlearnDataset) else "lm"
    if task == "classifier":  # a classifier is one more kind of batch: checked and prepared here
        train_dataset = prepare_classifier(model, args, train_dataset)
        data_collator = data_collator or ClassificationCollator(getattr(processing_class, "pad_token_id", 0) or 0)
    elif args.spec.batch == "classifier":
        raise ValueError(
            f"{args.method} unlearns classifiers: pass a classifier and a ClassificationUnlearnDataset "
            "(rklu_llm.data.classification.build_classification_unlearning_dataset)."
        )
    if processing_class is None and task == "lm":
        raise ValueError("Pass the tokenizer as processing_class (needed for padding and the augmented model).")
    if not isinstance(train_dataset, (ForgetRetainDataset, ClassificationUnlearnDataset)):
        raise TypeError(
            "train_dataset must be a ForgetRetainDataset (build one with rklu_llm.data.build_unlearning_dataset) "
            "or, for a classifier, a ClassificationUnlearnDataset."
        )
    if task == "lm":
        check_causal_lm(model.get_base_model() if is_peft(model) else model)
    check_output_dir(args.output_dir, model)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size == 1:
        raise RuntimeError(
            f"Launched as {launched} processes, but each would train alone on the same output_dir (a GPU "
            "accelerate config on a machine without GPUs?). On CPUs launch with accelerate_configs/cpu.yaml and "
            "pass --use_cpu; otherwise run on the GPUs the config names."
        )
    if args.retain_mode != "none" and train_dataset.retain is None:
        raise ValueError(
            f"retain_mode={args.retain_mode!r} needs a retain set: build the dataset with retain=... "
            "(or use retain_mode='none')."
        )
    if args.spec.needs_refusals and getattr(train_dataset, "refusal_answer_ids", None) is None:
        raise ValueError(f"{args.method} needs refusal answers: build the dataset with refusals=load_refusals().")
    return task, train_dataset, data_collator or UnlearnCollator(processing_class.pad_token_id)


def prepare_classifier(model, args, dataset: ClassificationUnlearnDataset):
    """Check a classifier run before any training and return the dataset it steps over.

    Raises on: a method for causal LMs; a retain-using reference without retain data; logits that are not
    ``(B, K)`` with ``K`` the data's number of classes (one forward pass on two forget samples). ``retrain``
    (``Method.reinitialize``) re-initialises the weights here (seeded); ``finetune`` / ``retrain`` step over the
    retain set.
    """
    spec = args.spec
    if spec.batch == "lm":
        raise ValueError(
            f"{args.method} unlearns causal LMs; for a classifier use one of "
            f"{sorted(m for m, s in METHODS.items() if s.batch != 'lm')}."
        )
    if args.use_lora:
        raise ValueError("use_lora trains a causal-LM adapter; a classifier unlearns with all its weights.")
    if spec.uses_retain_data and dataset.retain is None:
        raise ValueError(
            f"{args.method} is a reference that USES RETAIN DATA (it trains on the retain set): build the dataset "
            "with retain=... , or choose a retain-free method."
        )
    if dataset.kind == "input_ids" and spec.perturbs_inputs and not takes_keywords(model):
        raise ValueError(f"{args.method} perturbs token embeddings (inputs_embeds): it needs a transformers model.")
    probe = ClassificationCollator()([dataset[i] for i in range(min(2, len(dataset)))])["forget"]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = classifier_logits(model, {k: v.to(device) for k, v in probe.items()})
    model.train(was_training)
    check_logits_shape(logits, len(probe["labels"]), dataset.num_classes)
    if spec.reinitialize:
        reinitialize(model, args.seed)
    return dataset.over_retain() if spec.uses_retain_data else dataset
