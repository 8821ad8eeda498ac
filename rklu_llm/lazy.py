"""Public names of a package imported on first use (PEP 562): ``rklu_llm`` and ``rklu_llm.eval`` name what they
export without importing it, so that importing one of their modules (or ``rklu-llm --version``) does not pay for the
rest."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module (relative to
    ``package``) that defines it; a name is imported when first read, then kept in ``namespace`` (the package's
    ``globals()``), so the next read is a plain attribute."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
