"""Fine-tune a model on TOFU (``full``: the model to unlearn; ``retainXX``: the oracle that never saw the forget split,
whose stored evaluation is the forget-quality reference), save it and evaluate it.

    python recipes/finetune_tofu.py --split full --output_dir runs/full --data_dir data/tofu
    python recipes/finetune_tofu.py --split retain90 --output_dir runs/retain90 --data_dir data/tofu

The body lives in the package (``rklu_llm.scripts.finetune``, also ``rklu-llm finetune``); see ``--help``.
"""

from rklu_llm.scripts.finetune import main

if __name__ == "__main__":
    main()
