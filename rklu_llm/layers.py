"""The package's layers, bottom to top: a module imports only from its own layer or the ones below it, and no import
cycle exists. ``docs/architecture.md`` describes them; ``tests/test_layers.py`` checks the import graph against this
list and that the page names the same layers.

Each layer lists module names relative to the package (``"eval.metrics"``); a name covers its sub-modules, and a
module belongs to the layer of the longest name that covers it (``eval.metrics`` is a foundation, the rest of ``eval``
is the evaluation layer). ``"<package>.__init__"`` is that package's ``__init__`` alone (``"__init__"``: the top
package): ``rklu_llm`` and ``rklu_llm.eval`` import their public names on first use, so they depend on nothing.
"""

from __future__ import annotations

#: (layer name, the modules it holds), bottom to top
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundations",
        (
            "__init__",
            "eval.__init__",
            "paths",
            "offline",
            "distributed",
            "io",
            "losses",
            "classifiers",
            "field_tags",
            "item_counts",
            "layers",
            "lazy",
            "eval.metrics",
            "eval.io",
        ),
    ),
    ("run state and models", ("run_state", "models")),
    ("data", ("data", "tasks")),
    ("frozen models", ("teacher", "teacher_check", "frozen")),
    ("methods", ("methods",)),
    ("config", ("config",)),
    ("model cards", ("hub",)),
    ("training steps", ("run_inputs", "run_fingerprint", "objective")),
    ("trainer", ("trainer",)),
    ("evaluation", ("eval",)),
    ("entry points", ("eval.arguments", "scripts", "cli", "demo")),
)


def layer_of(module: str, package: str = "rklu_llm") -> int:
    """The index in :data:`LAYERS` of ``module`` (a dotted name in ``package``); KeyError for one no layer covers."""
    name = module[len(package) + 1 :] if module.startswith(package + ".") else ("" if module == package else module)
    best, index = None, None
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if member == "__init__" or member.endswith(".__init__"):  # the package's __init__ alone
                covers = name == member.removesuffix("__init__").removesuffix(".")
            else:
                covers = name == member or name.startswith(member + ".")
            if covers and (best is None or len(member) > len(best)):
                best, index = member, i
    if index is None:
        raise KeyError(f"{module}: no layer of rklu_llm.layers.LAYERS holds it")
    return index
