"""Notebooks stay thin drivers: a `parameters` cell, no definitions, no numbers of their own,
no stored outputs; each dvc.yaml stage that runs one passes only parameters it declares."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_are_notebooks() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"01_data.ipynb", "02_train.ipynb", "03_evaluate.ipynb", "04_report.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_thin_driver(path: Path) -> None:
    cells = _code_cells(path)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for cell in cells:
        assert not cell.get("outputs"), "sources are kept output-free"
        tree = ast.parse(_source(cell))
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: logic belongs in src/tcm, found a definition"
            if cell is not tagged[0] and isinstance(node, ast.Constant):
                assert not isinstance(node.value, (int, float)) or isinstance(node.value, bool), \
                    f"{path.name}: number {node.value!r} outside the parameters cell; it belongs in params.yaml"
    # Parameters are plain assignments of strings (names and paths), or None for an optional one;
    # nothing computed.
    for stmt in ast.parse(_source(tagged[0])).body:
        assert isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
        assert isinstance(stmt.value.value, str) or stmt.value.value is None


def test_dvc_stages_pass_only_declared_notebook_parameters() -> None:
    import re

    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    seen = set()
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        m = re.search(r"tcm notebook (notebooks/\S+\.ipynb) (reports/notebooks/\S+\.ipynb)", cmd)
        if not m:
            continue
        seen.add(name)
        declared = {t.id for s in ast.parse(_source(next(c for c in _code_cells(REPO / m.group(1))
                                                      if "parameters" in c["metadata"].get("tags", [])))).body
                    for t in s.targets}
        passed = set(re.findall(r"-p (\w+)", cmd))
        assert passed <= declared, f"stage {name} passes {passed - declared} that {m.group(1)} does not declare"
    assert seen >= {"data", "train", "evaluate", "report"}
