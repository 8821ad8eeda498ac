"""rklu-llm: machine unlearning for Hugging Face causal LMs (RKL-U and baselines), TOFU evaluation, model cards.

Commands (each takes --config run.yaml, flags on the command line override the file; --help lists every field
with its help text and default):

  rklu-llm unlearn --model runs/full --output_dir runs/rklu --retain_eval runs/retain90/tofu_eval.json
  rklu-llm finetune --split full --output_dir runs/full
  rklu-llm diagnose --model runs/full --forget_split forget01 --output_dir runs/rklu_forget01
  rklu-llm eval tofu --model runs/rklu --retain_eval runs/retain90/tofu_eval.json
  rklu-llm eval audit --model runs/rklu --forget_split forget10 --audit all
  rklu-llm eval copyright --model runs/book/rklu --output_dir runs/book/rklu --books_dir data/books
  rklu-llm eval general --model runs/rklu --output_dir runs/rklu --general_limit 100
  rklu-llm copyright --books_dir data/books --wikitext_dir data/wikitext --output_dir runs/book
  rklu-llm classifier --dataset fashion_mnist --output_dir runs/fmnist
  rklu-llm demo
  rklu-llm push runs/rklu your-name/smollm2-rklu-forget10
  rklu-llm methods

TOFU is read from --data_dir, else $RKLU_TOFU_DIR, else the hub (locuslab/TOFU). Documentation: the docs/ folder of
the source repository.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from pathlib import Path

import yaml

from . import __version__

#: Every command that runs a script: "command" or "group command" -> (module, one-line help). A module exposes
#: ``ARGUMENTS`` (the dataclass types HfArgumentParser fills) and ``main(argv: list[str] | None = None)``.
#: A new evaluator is one more "eval <name>" entry.
COMMANDS: dict[str, tuple[str, str]] = {
    "unlearn": ("rklu_llm.scripts.unlearn", "unlearn a TOFU forget split with any method, then evaluate the result"),
    "finetune": ("rklu_llm.scripts.finetune", "fine-tune on TOFU: the model to unlearn, or a retain-only oracle"),
    "diagnose": (
        "rklu_llm.scripts.diagnose",
        "build RKL-U's augmented model and check whether its teacher would still reproduce the forget set",
    ),
    "eval tofu": (
        "rklu_llm.scripts.eval_tofu",
        "TOFU metrics of a model: probability, ROUGE-L, truth ratio, model utility, forget quality",
    ),
    "eval audit": (
        "rklu_llm.scripts.eval_audit",
        "membership inference, extraction, leak@k, relearning and quantization audit of a TOFU-unlearned model",
    ),
    "eval copyright": (
        "rklu_llm.scripts.eval_copyright",
        "continuation BLEU / ROUGE-L of a book's chunks and WikiText perplexity of a model",
    ),
    "eval general": (
        "rklu_llm.scripts.eval_general",
        "lm-eval-harness accuracy on the shipped tasks (PIQA, HellaSwag, ARC, COPA, WSC273, MathQA, ...)",
    ),
    "copyright": (
        "rklu_llm.scripts.copyright",
        "make a model memorise a book (optional), unlearn it, evaluate continuations, perplexity and lm-eval",
    ),
    "classifier": (
        "rklu_llm.scripts.classifier",
        "train an image / text classifier (or load one), make it forget classes or samples, evaluate",
    ),
    "demo": ("rklu_llm.demo", "teach the embedded SmolLM2 four people, make it forget one with RKL-U (CPU, minutes)"),
    "push": (
        "rklu_llm.scripts.push",
        "upload a finished model folder (weights, tokenizer, card, evaluations) to the hub, private by default",
    ),
}

GROUP_HELP = {"eval": "evaluate a saved model (one evaluator per sub-command)"}


class _NoCpuKernelHint(logging.Filter):
    """Drops one bitsandbytes message, and only that one.

    peft imports bitsandbytes whenever it is installed (the ``audit`` extra), so every command that trains would
    start with "Failed to load CPU gemm_4bit_forward from kernels-community ...": bitsandbytes could not fetch an
    optional 4-bit CPU kernel from the hub. Nothing here uses 4-bit weights except the audit's quantization round
    trip, which runs on bitsandbytes' built-in kernel instead. Every other bitsandbytes message still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")


_NO_CPU_KERNEL_HINT = _NoCpuKernelHint()  # one instance: adding it again is a no-op


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows every field's default."""


def _config_path(argv: list[str], parser: argparse.ArgumentParser) -> tuple[str | None, list[str]]:
    """Take ``--config FILE`` / ``--config=FILE`` (or a lone ``FILE.yaml``) out of ``argv``."""
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return argv[0], []
    for at, arg in enumerate(argv):
        if arg == "--config":
            if at + 1 >= len(argv):
                parser.error("--config needs a YAML file path")
            return argv[at + 1], argv[:at] + argv[at + 2 :]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], argv[:at] + argv[at + 1 :]
    return None, argv


def _read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    if not Path(path).is_file():
        parser.error(f"--config {path}: no such file")
    with open(path, encoding="utf-8") as handle:
        try:
            values = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            parser.error(f"--config {path} is not valid YAML: {exc}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        parser.error(
            f"--config {path} must hold a mapping of field: value at its top level (e.g. 'method: rklu'), "
            f"not a {type(values).__name__}"
        )
    known = {action.dest for action in parser._actions}
    unknown = sorted(str(key) for key in set(values) - known)
    if unknown:
        parser.error(f"unknown key(s) in {path}: {', '.join(unknown)} (see --help for the fields)")
    return values


def parse_arguments(
    dataclass_types,
    argv: list[str] | None = None,
    defaults: dict | None = None,
    prog: str | None = None,
    description: str | None = None,
):
    """Parse ``dataclass_types`` (HfArgumentParser) from the command line, with an optional YAML file of values.

    Precedence, lowest first: the dataclass defaults, ``defaults``, the YAML file of ``--config run.yaml`` (or a lone
    ``run.yaml`` argument), the flags on the command line. Unknown YAML keys and unknown flags are errors; a YAML
    file must hold a mapping at its top level.

    Returns:
        One instance per dataclass type, in order.
    """
    from transformers import HfArgumentParser  # heavy (torch): not for `rklu-llm --version` / `--help`

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types, prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,
        help="YAML file of field: value pairs (any field of this command); flags on the command line override it.",
    )
    config_path, argv = _config_path(argv, parser)
    if defaults:
        parser.set_defaults(**defaults)
    if config_path is not None:
        parser.set_defaults(**_read_config(config_path, parser))
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(parsed)


@contextlib.contextmanager
def _program_name(name: str):
    """``sys.argv[0]`` as ``name`` while a command runs: argparse's usage line and the command recorded in model
    cards then read ``rklu-llm unlearn ...``."""
    saved = sys.argv[:]
    sys.argv = [name, *sys.argv[1:]]
    try:
        yield
    finally:
        sys.argv = saved


#: what a method's batches come from (``Method.batch``), in words
MODEL_KINDS = {"lm": "language models", "classifier": "classifiers", "both": "language models and classifiers"}


def print_methods() -> None:
    """One line per method of :data:`rklu_llm.config.METHODS`: its forget loss and what a run needs besides the
    forget set."""
    from .config import METHODS  # lazy, as above: the config imports torch and transformers

    width = max(len(name) for name in METHODS) + 1
    for name, spec in METHODS.items():
        needs = []
        if spec.default_retain_mode != "none" or spec.uses_retain_data:
            needs.append("retain data")
        if spec.needs_reference:
            shared = "a copy" if spec.batch == "classifier" else "a copy, or the LoRA student's base"
            needs.append(f"a frozen original ({shared})")
        if spec.needs_augmented:
            needs.append("the augmented model (phase 1 builds it)")
        if spec.needs_refusals:
            needs.append("refusal answers (built-in list or refusal_file)")
        if not spec.trains:
            needs.append("no training loop (a weight edit)")
        needs.append(f"for {MODEL_KINDS[spec.batch]}")
        print(
            f"{name:<{width}} {spec.loss}\n{'':<{width}} needs: {'; '.join(needs[:-1]) or 'the forget set only'}; "
            f"{needs[-1]}"
        )
    print("\nAny method also takes a retain term: --retain_mode rt (NLL) or kl (KL to the original) on retain data.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rklu-llm", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"rklu-llm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (_, text) in COMMANDS.items():
        group, _, sub = name.rpartition(" ")
        if not group:
            commands.add_parser(name, help=text, add_help=False)
            continue
        if group not in groups:
            group_parser = commands.add_parser(group, help=GROUP_HELP.get(group, group))
            groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="NAME", required=True)
        groups[group].add_parser(sub, help=text, add_help=False)
    commands.add_parser("methods", help="list the unlearning methods and what each needs")
    return parser


def main(argv: list[str] | None = None) -> None:
    """The ``rklu-llm`` command: dispatch to the script module of :data:`COMMANDS`."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NO_CPU_KERNEL_HINT)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "methods":
        if rest:
            build_parser().error(f"methods takes no arguments, got {' '.join(rest)}")
        print_methods()
        return
    name = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    prog = f"rklu-llm {name}"
    if "-h" in rest or "--help" in rest:
        parse_arguments(module.ARGUMENTS, ["--help"], prog=prog, description=module.__doc__ or text)
    with _program_name(prog):
        module.main(argv=rest)


if __name__ == "__main__":
    main()
