"""Argument parsing shared by the recipes (HfArgumentParser + YAML), and the ``rklu-llm`` command."""

from __future__ import annotations

import argparse
import sys

import yaml
from transformers import HfArgumentParser


def parse_arguments(dataclass_types, argv: list[str] | None = None):
    """Parse ``dataclass_types`` from the command line, with an optional YAML file of defaults.

    ``--config run.yaml`` (or a lone ``run.yaml`` argument) loads values from YAML; flags on the command line override
    them. Unknown YAML keys are an error, like unknown flags.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    config_path = None
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        config_path, argv = argv[0], []
    elif "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            parser.error("--config needs a YAML file path")
        config_path = argv[at + 1]
        argv = argv[:at] + argv[at + 2 :]
    if config_path is not None:
        with open(config_path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"unknown key(s) in {config_path}: {', '.join(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> None:
    """``rklu-llm demo`` runs the demo; ``rklu-llm methods`` lists the methods."""
    parser = argparse.ArgumentParser(prog="rklu-llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="teach the embedded SmolLM2 two people, unlearn one with RKL-U (CPU)")
    demo.add_argument("--data_dir", default=None, help="TOFU folder (default: $RKLU_TOFU_DIR, then the hub)")
    demo.add_argument("--output_dir", default="runs/demo", help="where the demo writes its models and table")
    demo.add_argument("--model", default=None, help="model to use (default: the embedded SmolLM2)")
    sub.add_parser("methods", help="list the unlearning methods and what each needs")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(data_dir=args.data_dir, output_dir=args.output_dir, model_name=args.model)
    else:
        from .config import METHODS

        for name, spec in METHODS.items():
            needs = [n for n, used in (("reference", spec.needs_reference), ("augmented", spec.needs_augmented),
                                       ("refusals", spec.needs_refusals)) if used]
            print(f"{name:5s} {spec.loss}  [needs: {', '.join(needs) or 'nothing extra'}]")


if __name__ == "__main__":
    main()
