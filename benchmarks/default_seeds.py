"""Does TCM lower OPIS on the embedded default at comparable Recall@1? One seed says little on 5
test classes, so this trains every default run with several seeds (in process, MLflow off) and
writes mean and spread to reports/benchmarks/default_seeds.md.

    python benchmarks/default_seeds.py [--seeds 0 1 2 3 4] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from tcm import evaluate, train
from tcm.config import parse_config
from tcm.data import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", type=Path)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="reports/benchmarks/default_seeds.md", type=Path)
    args = ap.parse_args()
    raw = yaml.safe_load(args.params.read_text())
    raw["mlflow"]["enabled"] = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw["paths"] = {"data": f"{tmp}/data", "runs": f"{tmp}/runs", "reports": f"{tmp}/reports"}
        cfg = parse_config(raw)
        for name, ds in cfg.datasets.items():
            prepare(ds, cfg.data_dir(name))
        for seed in args.seeds:
            raw["run_defaults"]["train"]["seed"] = seed
            raw["paths"]["runs"] = f"{tmp}/runs-{seed}"
            cfg = parse_config(raw)
            for name, run in cfg.runs.items():
                train.run(cfg, name, progress=False)
                m = evaluate.run(cfg, name, progress=False)
                rows.append({"loss": run.loss.name, "tcm": run.tcm.enabled, "seed": seed, "R@1": m["recall_at_k"]["1"],
                             "MAP@R": m["map_at_r"], "OPIS": m["opis"], "eps-OPIS": m["eps_opis"]})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    summary = df.groupby(["loss", "tcm"]).agg(**{f"{k} {s}": (k, s) for k in ("R@1", "OPIS", "eps-OPIS")
                                                 for s in ("mean", "std")}).reset_index()
    paired = df.pivot_table(index=["loss", "seed"], columns="tcm", values=["OPIS", "R@1"])
    lowered = ((paired[("OPIS", True)] < paired[("OPIS", False)]).groupby(level=0).agg(["sum", "count"]))
    lines = ["# TCM on the embedded default, over seeds", "",
             f"`python benchmarks/default_seeds.py --seeds {' '.join(map(str, args.seeds))}`: every run of "
             f"`{args.params}` (digits, small CNN) trained once per seed, MLflow off. Mean and standard deviation "
             "over seeds:", "", summary.to_markdown(index=False, floatfmt=".4f"), "",
             "Seeds where TCM gave a lower OPIS than the same seed without it:", "",
             *(f"- {loss}: {int(r['sum'])} of {int(r['count'])}" for loss, r in lowered.iterrows()), "",
             "Per seed:", "", df.to_markdown(index=False, floatfmt=".4f"), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
