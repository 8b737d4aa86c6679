"""Cold and no-op `dvc repro` of the default pipeline in a fresh clone; writes
reports/benchmarks/pipeline.md. Targets: cold <= 240 s (the default: pretrain + 4 runs x 5 seeds), no-op <= 5 s on
2 CPU cores.

    python benchmarks/pipeline.py [--repo .] [--out reports/benchmarks/pipeline.md]

Run it on an otherwise idle machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tcm.device import cpu_model


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return seconds, out.stdout


def stage_times(clone: Path) -> pd.DataFrame:
    """Seconds per executed stage notebook, from papermill's metadata."""
    rows = []
    for nb in sorted((clone / "reports/notebooks").glob("*.ipynb")):
        meta = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {})
        if "duration" in meta:
            rows.append({"notebook": nb.stem, "seconds": meta["duration"]})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=".", type=Path)
    ap.add_argument("--out", default="reports/benchmarks/pipeline.md", type=Path)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(args.repo.resolve()), str(clone)], check=True)
        cold, log = timed(["dvc", "repro"], clone)
        stages = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")]
        noop = [timed(["dvc", "repro"], clone)[0] for _ in range(3)]
        claims = (clone / "reports/tables/claims.md").read_text()
        per_stage = stage_times(clone)
    lines = [
        "# Pipeline timing", "",
        f"Measured by `python benchmarks/pipeline.py` on commit {commit}, in a fresh `git clone`.", "",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; no GPU used.",
        f"- Cold `dvc repro` of the default ({len(stages)} stages: {', '.join(stages)}): **{cold:.1f} s** "
        f"(target <= 240 s: {'met' if cold <= 240 else 'not met'}).",
        f"- No-op `dvc repro` (median of 3: {', '.join(f'{s:.2f}' for s in noop)} s): "
        f"**{statistics.median(noop):.2f} s** (target <= 5 s).",
        "", "Wall time of each stage's notebook (papermill's record in the executed copy):", "",
        per_stage.to_markdown(index=False, floatfmt=".1f"), "",
        "## The claims table of that run", "", claims,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
