"""benchmarks/gpu.sh runs on a GPU machine that none of the tests reach: its command lines must at least
name scripts that exist and options those scripts accept (no timing is measured here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[list[str]]:
    text = (REPO / "benchmarks/gpu.sh").read_text().replace("\\\n", " ")
    return [shlex.split(line.split("python3", 1)[1].replace("$out", "OUT").replace("$workers", "3").replace('"', ""))
            for line in text.splitlines() if line.startswith("part ")]


@pytest.mark.slow
def test_gpu_script_is_valid_bash_and_its_scripts_accept_its_options() -> None:
    subprocess.run(["bash", "-n", str(REPO / "benchmarks/gpu.sh")], check=True)
    commands = _commands()
    assert {Path(c[0]).name for c in commands} == {"train_step.py", "train_e2e.py", "losses.py", "eval_scale.py"}
    for cmd in commands:
        script = REPO / cmd[0]
        assert script.is_file(), script
        help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                   check=True, cwd=REPO).stdout
        for option in (a for a in cmd[1:] if a.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", help_text), f"{script.name} does not accept {option}"
