"""Where the project is: notebooks name ``params.yaml`` relative to the project root, while JupyterLab
starts a notebook's kernel in ``notebooks/`` (and DVC, papermill and the tests in the root)."""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: Path | str | None = None) -> Path:
    """``$DVC_ROOT`` when set (DVC sets it for every stage command), else the first folder from
    ``start`` (default: the current folder) upwards that holds ``dvc.yaml``; ``start`` itself when
    none does, so a params file outside any project still resolves as before."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    here = Path(start if start is not None else Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / "dvc.yaml").is_file()), here)


def resolve_params(path: Path | str = "params.yaml") -> Path:
    """``path`` as given when absolute or present from the current folder; otherwise relative to
    :func:`project_root` (a notebook run from ``notebooks/`` finds the root's params.yaml)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return project_root() / path
