"""The two install routes stay in step, and CI runs exactly the README's test command."""

from __future__ import annotations

import re

import tomllib
import yaml
from conftest import REPO


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
