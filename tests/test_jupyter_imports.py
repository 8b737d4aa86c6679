"""`tcm notebook` and the report's HTML renders load papermill/nbformat without jsonschema's IRI grammar
(tcm.jupyter_imports), and notebooks are still validated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

CHECK = """
import sys
from tcm.cli import main
code = main(["notebook", sys.argv[1], sys.argv[2]])
print(code, repr(sys.modules.get("rfc3987_syntax", "never imported")))
"""


def test_a_stage_notebook_runs_without_loading_the_iri_grammar(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 6 * 7\nprint(x)")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    out = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["0", "None"], out.stdout + out.stderr  # blocked, not imported
    assert "42" in (tmp_path / "out.ipynb").read_text()


def test_notebooks_are_still_validated_without_it() -> None:
    code = ("from tcm.jupyter_imports import skip_iri_grammar; skip_iri_grammar(); import nbformat\n"
            "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')]); nbformat.validate(nb)\n"
            "nb.cells[0]['cell_type'] = 'no such type'\n"
            "try:\n    nbformat.validate(nb)\nexcept nbformat.ValidationError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr
