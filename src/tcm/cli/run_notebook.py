"""`tcm notebook IN OUT -p NAME VALUE ...`: run a stage notebook with papermill, as dvc.yaml does.

Three things plain `papermill` does not do for a pipeline stage:
- the kernel's stderr (one line per epoch, progress) streams to the terminal while the cell runs;
- the executed copy keeps one stream output per cell (not one per progress update);
- an error the user can fix (a :class:`tcm.errors.TcmError` raised in the notebook: bad data, a
  diverged run, a locked run folder) ends the stage with that one line and exit 2, not with
  papermill's traceback and the notebook's. The executed notebook keeps the full traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from tcm.errors import TcmError

KERNEL = "python3"


def user_error_names() -> set[str]:
    """Class names of every :class:`TcmError` in the package (papermill reports a notebook's
    exception by class name only). Imports the whole package: called only after a failure."""
    import tcm

    for mod in pkgutil.walk_packages(tcm.__path__, "tcm."):
        if not mod.name.endswith("__main__"):
            try:
                importlib.import_module(mod.name)
            except ImportError:  # optional dependencies (mlflow on GPU boxes)
                pass
    names, todo = set(), [TcmError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def run_notebook(source: Path, output: Path, parameters: dict[str, str]) -> int:
    """Execute ``source`` into ``output`` with ``parameters``; 0, or 2 after a user error (one line on stderr)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        # coalesce_streams: one stderr output per cell in the executed copy, progress bars reduced to
        # their last state, instead of one output per update.
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=KERNEL,
                                   progress_bar=False, stderr_file=sys.stderr, cwd=None, coalesce_streams=True)
    except PapermillExecutionError as e:
        if e.ename in user_error_names():
            print(f"\ntcm: error: {e.evalue} (the executed notebook {output} has the details)", file=sys.stderr)
            return 2
        print(f"{e}\ntcm: notebook {source} failed; the executed copy is {output}", file=sys.stderr)
        return 1
    return 0
