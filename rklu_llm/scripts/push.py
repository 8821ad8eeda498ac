"""Upload a finished model folder to the Hugging Face hub: weights (*.safetensors), LoRA adapter files, configs,
tokenizer files, the model card (README.md) and evaluation results (*_eval.json). Nothing else: never the augmented
model, checkpoints, training arguments, run bookkeeping or caches. The repository is created private.

    rklu-llm push runs/rklu_forget10 your-name/smollm2-rklu-forget10
    rklu-llm push runs/rklu_forget10 your-name/smollm2-rklu-forget10 --dry_run     # list the files only
    rklu-llm push --model_dir runs/rklu_forget10 --repo_id your-name/smollm2-rklu-forget10 --public

The token comes from $HF_TOKEN or the saved login (`hf auth login`); it is never printed or written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from rklu_llm.cli import parse_arguments
from rklu_llm.hub import publishable_files, push_to_hub


@dataclass
class PushArguments:
    model_dir: str | None = field(default=None, metadata={"help": "The finished model folder (first positional)."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repository, owner/name (second positional)."})
    public: bool = field(default=False, metadata={"help": "Create a public repository (default: private)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (default: main)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    dry_run: bool = field(default=False, metadata={"help": "Only list the files that would be uploaded."})


ARGUMENTS = (PushArguments,)
POSITIONAL = ("model_dir", "repo_id")


def main(argv: list[str] | None = None) -> str | list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    leading = []
    while argv and not argv[0].startswith("-") and len(leading) < len(POSITIONAL):
        leading.append(argv.pop(0))
    flags = [item for name, value in zip(POSITIONAL, leading) for item in (f"--{name}", value)]
    (args,) = parse_arguments(ARGUMENTS, flags + argv)
    if args.model_dir is None or (args.repo_id is None and not args.dry_run):
        print(
            "usage: rklu-llm push MODEL_DIR REPO_ID [--public] [--revision BRANCH] [--dry_run]\n"
            "error: MODEL_DIR and REPO_ID are required (REPO_ID not with --dry_run)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if args.dry_run:
        names = [path.name for path in publishable_files(args.model_dir)]
        print("Would upload:\n  " + "\n  ".join(names))
        return names
    return push_to_hub(
        args.model_dir,
        args.repo_id,
        private=not args.public,
        revision=args.revision,
        commit_message=args.commit_message,
    )


if __name__ == "__main__":
    main()
