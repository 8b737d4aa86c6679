"""Which source files a stage runs, and a fingerprint of them.

A checkpoint stores the fingerprint of the training code that wrote it, so an interrupted run
resumes only under the same code: a fixed bug in a loss, the model or the data code must never be
hidden behind a resumed checkpoint. The files are found by reading the import statements of the
stage's module and, transitively, of every ``tcm`` module they name (function-level imports
included, so lazily imported code counts too) — the same set that ``dvc.yaml`` must list as the
stage's dependencies (tests/test_dvc_deps.py holds both to it).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import tcm

PACKAGE_DIR = Path(tcm.__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` of this package (a package's ``__init__.py``)."""
    if name != "tcm" and not name.startswith("tcm."):
        return None
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE_DIR / rel / "__init__.py", (PACKAGE_DIR / rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_names(source: str, package: str = "", filename: str = "<source>") -> set[str]:
    """Modules (and names that may be modules) the import statements of ``source`` name, at any depth
    (function-level imports included): ``import a.b`` names a.b, ``from a import b`` names a and a.b;
    relative imports are resolved against ``package``. The one import reader of the package and its
    tests (the fingerprint, the stage dependencies of dvc.yaml).

    >>> sorted(imported_names("import os\\ndef f():\\n    from . import cub\\n    from .specs import X", "tcm.data"))
    ['os', 'tcm.data', 'tcm.data.cub', 'tcm.data.specs', 'tcm.data.specs.X']
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _imported_names(path: Path, module: str) -> set[str]:
    """Modules named by the import statements of one file, and the packages above them."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = imported_names(path.read_text(), package, str(path))
    # Importing a.b.c runs a/__init__ and a/b/__init__ too.
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


@lru_cache(maxsize=None)
def source_files(module: str) -> tuple[Path, ...]:
    """Every file of this package that importing ``module`` (and calling into it) may run, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        todo.extend(_imported_names(path, name) - set(seen))
    return tuple(sorted(set(seen.values())))


def code_fingerprint(module: str) -> str:
    """SHA-256 (16 hex digits) over the relative paths and bytes of :func:`source_files`."""
    h = hashlib.sha256()
    for path in source_files(module):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
