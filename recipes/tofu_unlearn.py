"""Unlearn a TOFU forget split with any method, then evaluate the result with the TOFU metrics.

The body lives in the package (``rklu_llm.scripts.unlearn``, also ``rklu-llm unlearn``); ``tofu_forget01.py``,
``tofu_forget05.py`` and ``tofu_forget10.py`` fix the split. See ``python recipes/tofu_unlearn.py --help``.
"""

from rklu_llm.scripts.unlearn import main

if __name__ == "__main__":
    main()
