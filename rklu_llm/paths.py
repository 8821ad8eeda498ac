"""Paths as they may appear in artefacts (model cards, result JSON, logs): never the machine's absolute local path.

A run's artefacts travel (pushed to the hub, shared as files), so a path written into them says where something was
*relative to the run*, not where it sat on one machine:

* a hub id (``org/name``) or an ``embedded:<name>`` model stays as it is;
* a relative path stays as given;
* an absolute path under the current working directory becomes relative to it;
* any other absolute path keeps only its last ``keep`` components, behind ``<local>/``
  (``/home/alice/runs/full`` -> ``<local>/runs/full``); the user's home shows as nothing either.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

LOCAL = "<local>"


def portable_path(path: str | os.PathLike | None, keep: int = 2) -> str | None:
    """``path`` as it may be written into an artefact (see the module docstring); ``None`` stays ``None``.

    Args:
        path: a local path, a hub id, or ``embedded:<name>``.
        keep: components kept of an absolute path outside the working directory.
    """
    if path is None:
        return None
    text = os.fspath(path)
    if not text or not os.path.isabs(os.path.expanduser(text)):
        return text
    absolute = Path(os.path.expanduser(text)).resolve()
    try:
        return str(PurePosixPath(*absolute.relative_to(Path.cwd().resolve()).parts)) or "."
    except ValueError:
        parts = absolute.parts[1:][-keep:] if keep > 0 else ()
        return "/".join((LOCAL, *parts))
