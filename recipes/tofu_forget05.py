"""TOFU forget05: unlearn 5% of the fictitious authors (RKL-U by default, no retain data), then evaluate.

    accelerate launch recipes/tofu_forget05.py --model runs/full --output_dir runs/rklu_forget05 \
        --data_dir data/tofu --retain_eval runs/retain95/tofu_eval.json
    python recipes/tofu_forget05.py --method npo --model runs/full --output_dir runs/npo_forget05 ...
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/tofu_forget05.py ...

Every flag of rklu_llm.scripts.unlearn (TofuArguments, TofuEvalArguments, rklu_llm.UnlearnConfig) applies; see --help.
"""

from rklu_llm.scripts.unlearn import main

if __name__ == "__main__":
    main(default_split="forget05")
