"""What a stage notebook's processes load and how they end: `tcm notebook` and the report's HTML renders
load papermill/nbformat without jsonschema's IRI grammar (tcm.jupyter_imports), and notebooks are still
validated; the stage kernel (tcm.stage_kernel) runs exit handlers and keeps its exit status, but skips
the interpreter's module teardown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import write_notebook

CHECK = """
import sys
from tcm.cli import main
code = main(["notebook", sys.argv[1], sys.argv[2]])
print(code, repr(sys.modules.get("rfc3987_syntax", "never imported")))
"""


def test_a_stage_notebook_runs_without_loading_the_iri_grammar(tmp_path: Path) -> None:
    write_notebook(tmp_path / "in.ipynb", "x = 6 * 7\nprint(x)")
    out = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["0", "None"], out.stdout + out.stderr  # blocked, not imported
    assert "42" in (tmp_path / "out.ipynb").read_text()


STAGE_KERNEL_CELL = """
import atexit, threading, time
from pathlib import Path
def late():
    time.sleep(0.5)
    Path("thread.txt").write_text("joined")
threading.Thread(target=late).start()  # not a daemon: the exit waits for it
atexit.register(lambda: Path("atexit.txt").write_text(Path("thread.txt").read_text() + ", handler ran"))
print("kernel:", Path("/proc/self/cmdline").read_text().split(chr(0))[1:3])
"""


def test_the_stage_kernel_joins_threads_and_runs_exit_handlers_then_skips_the_teardown(tmp_path: Path) -> None:
    write_notebook(tmp_path / "in.ipynb", STAGE_KERNEL_CELL)
    out = subprocess.run([sys.executable, "-m", "tcm.cli", "notebook", "in.ipynb", "out.ipynb"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kernel: ['-m', 'tcm.stage_kernel']" in (tmp_path / "out.ipynb").read_text()
    assert (tmp_path / "atexit.txt").read_text() == "joined, handler ran"


def test_the_stage_kernel_keeps_its_exit_status(tmp_path: Path) -> None:
    code = "import sys; sys.argv = ['k', '--help-all']; from tcm.stage_kernel import main; main()"
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    bad = subprocess.run([sys.executable, "-c", code.replace("--help-all", "--no-such-option")], capture_output=True,
                         text=True)
    assert ok.returncode == 0 and "IPKernelApp" in ok.stdout, ok.stderr[-2000:]
    assert bad.returncode != 0, bad.stdout[-2000:]


def test_notebooks_are_still_validated_without_it() -> None:
    code = ("from tcm.jupyter_imports import skip_iri_grammar; skip_iri_grammar(); import nbformat\n"
            "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')]); nbformat.validate(nb)\n"
            "nb.cells[0]['cell_type'] = 'no such type'\n"
            "try:\n    nbformat.validate(nb)\nexcept nbformat.ValidationError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr
