"""Fixed cost of one pipeline stage: a notebook that only imports what a stage imports, run by plain
papermill (the baseline: its own process, ``python -m ipykernel_launcher``) and by `tcm notebook` (what
dvc.yaml runs: papermill imported without jsonschema's IRI grammar, tcm.jupyter_imports; a kernel that
skips the interpreter's module teardown, tcm.stage_kernel), alternately, in this process's loop:

    python benchmarks/stage_overhead.py [--repeats 5] [--write reports/benchmarks/stage_overhead.md]

Run it on an otherwise idle machine: it measures wall time. Every stage of `dvc repro` pays this cost
(11 stages in the default, about 150 in the test suite), beside its own work.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import nbformat
from pipeline import timed  # this folder's cold-repro benchmark: the same timed subprocess

from tcm.device import cpu_model

# The import cell of notebooks/03_evaluate.ipynb (the heaviest: torch, torchvision, pandas, scipy, PML).
IMPORTS = "from tcm import evaluate\nfrom tcm.config import load_config\nfrom tcm.notebook import plot_run_utility"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", type=Path, help="also write the result as Markdown to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
        nb.cells = [nbformat.v4.new_code_cell(IMPORTS), nbformat.v4.new_code_cell("print('done')")]
        nbformat.write(nb, work / "stage.ipynb")
        commands = {"papermill (baseline)": ["papermill", "stage.ipynb", "out.ipynb", "-k", "python3",
                                             "--no-progress-bar"],
                    "tcm notebook": ["tcm", "notebook", "stage.ipynb", "out.ipynb"]}
        timed(commands["tcm notebook"], work)  # warm-up: page cache, bytecode
        seconds: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                seconds[name].append(timed(cmd, work)[0])
    med = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = med["tcm notebook"] / med["papermill (baseline)"]
    lines = ["# Fixed cost of a pipeline stage", "",
             f"Measured by `python benchmarks/stage_overhead.py --repeats {args.repeats}` "
             f"({os.cpu_count()} CPU cores, {cpu_model()}, Python {platform.python_version()}): a notebook whose "
             "only work is the evaluate stage's import cell, run alternately by each command.", "",
             "| command | median s | runs (s) |", "|:--|--:|:--|"]
    lines += [f"| {k} | {med[k]:.2f} | {', '.join(f'{s:.2f}' for s in v)} |" for k, v in seconds.items()]
    saved = med["papermill (baseline)"] - med["tcm notebook"]
    lines += ["", f"Ratio tcm notebook / papermill: **{ratio:.2f}** ({saved:.2f} s less per stage)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
