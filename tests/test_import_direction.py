"""Imports point one way: command line -> stages -> shared pieces -> config -> foundations.

Nothing imports a layer above its own, and no stage imports another stage (evaluation must not
run training code, nor the report evaluation's). Function-level imports count too.

The imports are read here by a reader of this test's own (:func:`_imports`), an independent oracle of
the package's one import reader, :func:`tcm.fingerprint.imported_names` (which finds the files each
stage runs, for the resume fingerprint and dvc.yaml's deps): both must agree on every file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Layer of each top-level module or package of tcm; higher layers may import lower ones only.
LAYERS = {
    # foundations: no tcm imports but each other
    "tcm": 0, "tcm.errors": 0, "tcm.atomic": 0, "tcm.runfiles": 0, "tcm.stats": 0, "tcm.fingerprint": 0,
    "tcm.progress": 0, "tcm.locks": 0, "tcm.project": 0, "tcm.strict_yaml": 0, "tcm.jupyter_imports": 0,
    "tcm.stage_kernel": 0,
    # settings: config/ (base, registry of backbone and loss names, datasets, runs, evaluation, schema, loading)
    "tcm.config": 1,
    # shared pieces
    "tcm.data": 2, "tcm.models": 2, "tcm.losses": 2, "tcm.metrics": 2, "tcm.device": 2, "tcm.checkpoint": 2,
    "tcm.tracking": 2, "tcm.notebook": 2, "tcm.provenance": 2, "tcm.figures": 2, "tcm.samplers": 2, "tcm.embed": 2,
    "tcm.mlflow_log": 2, "tcm.safe_load": 2,
    # stages and what drives them (packages: every submodule takes the package's layer; report/: definitions,
    # runs, comparisons, claims, tables, figure_data, readme, notebooks, stage; train/: stage, seed, step, ...)
    "tcm.train": 3, "tcm.pretrain": 3, "tcm.evaluate": 3, "tcm.report": 3, "tcm.explore": 3, "tcm.profiles": 3,
    "tcm.cli": 4,
}
STAGES = {name for name, layer in LAYERS.items() if layer == 3}


def _unit(module: str) -> str:
    """The entry of LAYERS a module belongs to (tcm.data.cub -> tcm.data)."""
    parts = module.split(".")
    for i in range(len(parts), 1, -1):  # not down to "tcm": a new top-level module must get its own entry
        if ".".join(parts[:i]) in LAYERS:
            return ".".join(parts[:i])
    if module == "tcm":
        return module
    raise KeyError(module)


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            # `from tcm import train` imports the module tcm.train
            found.update(f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in LAYERS)
    return {n for n in found if n == "tcm" or n.startswith("tcm.")}


FILES = sorted(SRC.joinpath("tcm").rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in FILES:
        _unit(_module_name(path))  # raises KeyError for a module the table does not place


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_imports_point_down(path: Path) -> None:
    module = _module_name(path)
    unit = _unit(module)
    for imported in _imports(path, module):
        target = _unit(imported)
        if target == unit or imported == "tcm":
            continue
        assert LAYERS[target] <= LAYERS[unit], f"{module} (layer {LAYERS[unit]}) imports {imported} " \
                                               f"(layer {LAYERS[target]}): imports must point down"
        assert not (unit in STAGES and target in STAGES), f"stage {module} imports stage {imported}"
        if LAYERS[unit] == 0:
            assert LAYERS[target] == 0, f"{module} is a foundation but imports {imported}"


def test_a_module_without_a_layer_is_caught() -> None:
    with pytest.raises(KeyError):
        _unit("tcm.brand_new_module")
    assert _unit("tcm.data.cub") == "tcm.data" and _unit("tcm") == "tcm"
    assert _unit("tcm.train.seed") == "tcm.train" and _module_name(SRC / "tcm/train/__init__.py") == "tcm.train"


def test_the_check_catches_an_upward_import(tmp_path) -> None:
    bad = tmp_path / "models.py"
    bad.write_text("from tcm.train import run\n")
    assert _imports(bad, "tcm.models") == {"tcm.train"}
    assert LAYERS[_unit("tcm.train")] > LAYERS[_unit("tcm.models")]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_the_shared_import_reader_agrees_with_this_one(path: Path) -> None:
    """tcm.fingerprint.imported_names names the same tcm modules as :func:`_imports` (which adds
    ``x.y`` of ``from x import y`` only where y is a module of LAYERS; the shared reader adds every y)."""
    from tcm.fingerprint import imported_names

    def units(names) -> set[str]:
        found = set()
        for n in names:
            if n == "tcm" or n.startswith("tcm."):
                try:
                    found.add(_unit(n))
                except KeyError:  # `from tcm import __version__`: a name, not a module
                    continue
        return found

    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    assert units(imported_names(path.read_text(), package)) == units(_imports(path, module))
