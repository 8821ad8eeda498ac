"""The toolkit's runs, each a ``main(argv)`` over dataclass arguments (HfArgumentParser, ``--config run.yaml``):
``unlearn`` (TOFU unlearning then evaluation) and ``finetune`` (fine-tuning on TOFU, the original and the retain-only
oracles). The ``rklu-llm`` command and the files under ``recipes/`` call them."""
