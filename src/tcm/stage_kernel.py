"""The kernel `tcm notebook` runs a stage notebook in: ipykernel as ``python -m ipykernel_launcher`` runs
it, ending without Python's module teardown.

With torch and torchvision loaded (torchvision loads torch._dynamo), the interpreter's final teardown of
its modules takes 1.5-2 s on 2 cores, after the notebook is done and its results are written: every
stage of `dvc repro` waited for it. Here the exit handlers still run (MLflow's, IPython's) after
the kernel's threads have ended, as at any exit; then the process ends with its exit status, skipping
only that teardown (objects left alive are not finalised: the notebook's files are written and closed
by the stage code before its cell ends).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

_status = [0]


def _end_now() -> None:
    """Registered first, so it runs last of the exit handlers."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream has nothing left to flush
            pass
    os._exit(_status[0])


def main() -> None:
    atexit.register(_end_now)
    # As ipykernel_launcher: the working directory leaves sys.path while ipykernel loads (IPython puts
    # it back), so a notebook's folder cannot shadow a package.
    if sys.path[0] in ("", str(Path.cwd())):
        del sys.path[0]
    from ipykernel import kernelapp

    try:
        kernelapp.launch_new_instance()
    except SystemExit as e:
        _status[0] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise


if __name__ == "__main__":
    main()
