"""The two install routes stay in step, and CI runs exactly the README's test command; setup brings
JupyterLab and registers the notebooks' kernel "Python (tcm)" (`make install`, `make lab`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent  # the venv's scripts (jupyter), as test_mlflow_ui.py finds mlflow
KERNEL = {"name": "tcm", "display_name": "Python (tcm)", "language": "python"}
KERNEL_INSTALL = 'python -m ipykernel install --sys-prefix --name tcm --display-name "Python (tcm)"'
# What `make lab` and the notebooks' HTML in the MLflow UI need beyond papermill's own dependencies.
NOTEBOOK_PACKAGES = {"jupyterlab", "ipywidgets", "nbconvert", "seaborn"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_packages_and_pins_as_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | {r for extra in project["optional-dependencies"].values() for r in extra}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {r for r in pip if not r.startswith("-e")}
    assert {_name(r): r for r in listed} == {_name(r): r for r in wanted}
    assert "torch==2.14.1" in wanted and "torchvision==0.29.1" in wanted


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make repro", "make test"]
    lines = (REPO / ".ci/run").read_text().splitlines()
    ci = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"  # the test command, after installing the browser the UI test needs
    assert sum("pytest" in line or "make " in line for line in ci) == 1


def _env_pip() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def test_pipeline_extras_and_environment_yml_bring_jupyterlab_and_friends() -> None:
    pipeline = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pipeline"]
    assert NOTEBOOK_PACKAGES <= {_name(r) for r in pipeline}
    assert NOTEBOOK_PACKAGES <= {_name(r) for r in _env_pip()}
    assert all(re.search(r">=\d", r) for r in pipeline if _name(r) in NOTEBOOK_PACKAGES), "a lower bound each"


def _rule(makefile: str, target: str) -> tuple[list[str], str]:
    """The prerequisites and the recipe of ``target`` in a Makefile."""
    m = re.search(rf"^{re.escape(target)}:([^=\n]*)\n((?:\t.*\n?)*)", makefile, re.M)
    assert m, f"Makefile: no rule for {target}"
    return m[1].split(), m[2]


def test_setup_registers_the_kernel_and_make_lab_opens_the_notebooks() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert {"install", "lab"} <= set(re.search(r"^\.PHONY:(.*)$", makefile, re.M)[1].split())
    _, install = _rule(makefile, "$(VENV)/.installed")
    assert f"$(PY) -m {KERNEL_INSTALL.removeprefix('python -m ')}" in install
    assert install.index("ipykernel install") < install.index("touch $@"), "the stamp only after the kernel is in"
    prereqs, lab = _rule(makefile, "lab")
    assert prereqs == ["$(VENV)/.installed"]
    assert "jupyter lab notebooks/" in lab
    # conda users register the same kernel by hand (environment.yml says how).
    assert KERNEL_INSTALL in (REPO / "environment.yml").read_text()


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_names_the_tcm_kernel(path: Path) -> None:
    assert json.loads(path.read_text())["metadata"]["kernelspec"] == KERNEL


@pytest.mark.slow
def test_jupyter_lab_is_installed_in_the_venv() -> None:
    out = subprocess.run([str(BIN / "jupyter"), "lab", "--version"], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"\d+\.\d+\S*", out.stdout.strip()), out.stdout


def test_tcm_kernel_starts_this_environments_python() -> None:
    out = subprocess.run([str(BIN / "jupyter"), "kernelspec", "list", "--json"], capture_output=True, text=True,
                         check=True)
    specs = json.loads(out.stdout)["kernelspecs"]
    if "tcm" not in specs:
        pytest.skip(f"no Jupyter kernel 'tcm' registered; `make install` registers it ({KERNEL_INSTALL})")
    spec = specs["tcm"]["spec"]
    assert {k: spec[k] for k in ("display_name", "language")} == {k: KERNEL[k] for k in ("display_name", "language")}
    python = Path(spec["argv"][0])
    assert python.is_absolute() and python.is_relative_to(sys.prefix), \
        f"kernel 'tcm' starts {python}, not a python of this environment ({sys.prefix}); rerun `make install`"
    assert spec["argv"][spec["argv"].index("-m") + 1] == "ipykernel_launcher"
    subprocess.run([str(python), "-c", "import tcm"], check=True)
