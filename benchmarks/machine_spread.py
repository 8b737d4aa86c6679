"""How much the default's results move across machines, next to how much they move across seeds.

Training is bit-identical on one machine (tests/test_train.py) but not across CPUs (instruction
sets, thread counts) or between CPU and GPU. This trains every run of params.yaml, every seed, with
the `tcm` library alone (no DVC, papermill or MLflow: it also runs on the GPU machine), and writes
each seed's headline metrics as JSON:

    python benchmarks/machine_spread.py run --device cpu --out spread-here.json [--threads 1]
    python benchmarks/machine_spread.py compare spread-here.json spread-other.json [...] \
        --out reports/benchmarks/machine_spread.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import yaml


def run(args: argparse.Namespace) -> None:
    import torch

    from tcm import evaluate, pretrain, train
    from tcm.config import parse_config
    from tcm.data import prepare
    from tcm.device import environment, pick_device
    from tcm.stats import headline

    if args.threads:
        # Another thread count changes the order of floating-point sums: on one machine, the nearest
        # stand-in for another CPU.
        torch.set_num_threads(args.threads)
    raw = yaml.safe_load(Path(args.params).read_text())
    raw["mlflow"]["enabled"] = False
    raw["run_defaults"]["train"]["device"] = args.device
    raw["evaluation"]["device"] = args.device
    out: dict = {"environment": environment(pick_device(args.device)), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(raw, base_dir=tmp)
        t0 = time.perf_counter()
        for name, ds in cfg.datasets.items():
            prepare(ds, cfg.data_dir(name))
            pretrain.run(cfg, name, progress=False)
        for name in cfg.runs:
            train.run(cfg, name, progress=False)
            per_seed = evaluate.run(cfg, name, progress=False)
            out["runs"][name] = {str(s): headline(m) for s, m in per_seed.items()}
            print(name, {s: round(v["OPIS"], 5) for s, v in out["runs"][name].items()}, file=sys.stderr)
        out["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(out, indent=1))


def collect(args: argparse.Namespace) -> None:
    """The same JSON from the results `dvc repro` wrote on this machine (runs/<run>/eval/seed-<s>/)."""
    from tcm.config import load_config
    from tcm.stats import headline

    cfg = load_config(args.params)
    out: dict = {"runs": {}, "seconds": float("nan")}
    for name in cfg.runs:
        d = cfg.run_dir(name).root
        out["environment"] = json.loads((d / "run.json").read_text())["environment"]
        out["runs"][name] = {str(s): headline(json.loads((d / f"eval/seed-{s}/metrics.json").read_text()))
                             for s in cfg.run(name).train.seeds}
    Path(args.out).write_text(json.dumps(out, indent=1))


def compare(args: argparse.Namespace) -> None:
    import pandas as pd

    from tcm.stats import spread

    machines = [json.loads(Path(p).read_text()) for p in args.results]
    rows = []
    for i, m in enumerate(machines):
        for run, seeds in m["runs"].items():
            for seed, metrics in seeds.items():
                rows.append({"machine": i, "run": run, "seed": int(seed), **metrics})
    df = pd.DataFrame(rows)
    lines = ["# Results across machines and seeds (the default profile)", "",
             "Measured by `python benchmarks/machine_spread.py`; each machine trained and evaluated every run "
             "and seed of the default with the `tcm` library (MLflow off), or `collect` read what its `dvc repro` "
             "wrote. A 'machine' may be the same CPU with another torch thread count (`run --threads 1`): another "
             "order of floating-point sums, the nearest stand-in for another CPU that one machine offers.", ""]
    for i, m in enumerate(machines):
        e = m["environment"]
        lines.append(f"- machine {i}: {e['device']} (CPU {e['cpu']}, {e['cpu_count']} cores, {e['torch_threads']} "
                     f"torch threads), torch {e['torch']}, numpy {e['numpy']}, Python {e['python']}"
                     + ("; from `dvc repro`" if math.isnan(m["seconds"]) else f"; {m['seconds']:.0f} s for all runs"))
    lines += ["", "## Spread across seeds vs across machines", "",
              "sd over seeds: on machine 0, each run's seeds; sd over machines: for each run and seed, the sd of "
              "its value across machines, then the mean over seeds.", ""]
    table = []
    for run, g in df.groupby("run", sort=False):
        row = {"run": run}
        for metric in ("R@1", "OPIS"):
            seeds = spread(g.loc[g.machine == 0, metric].to_numpy())
            across = g.groupby("seed")[metric].apply(lambda v: spread(v.to_numpy()).sd).mean()
            row[f"{metric} mean (machine 0)"] = seeds.mean
            row[f"{metric} sd over seeds"] = seeds.sd
            row[f"{metric} sd over machines"] = across
        table.append(row)
    lines += [pd.DataFrame(table).to_markdown(index=False, floatfmt=".4f"), ""]
    lines += _verdicts(df, len(machines))
    lines += ["## Every value", "",
              df.pivot_table(index=["run", "seed"], columns="machine", values=["R@1", "OPIS"]).to_markdown(
                  floatfmt=".4f"), ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def _verdicts(df, n_machines: int) -> list[str]:
    """Each without/with-TCM pair's paired 95% t interval of the OPIS and R@1 change over seeds, on each
    machine, and whether the verdicts (lower / higher / no difference) agree."""
    import pandas as pd

    from tcm.stats import paired_difference

    runs = list(dict.fromkeys(df["run"]))
    rows = []
    for run in runs:
        if f"{run}-tcm" not in runs:
            continue
        for metric in ("OPIS", "R@1"):
            row = {"comparison": f"{run} vs {run}-tcm", "metric": metric}
            for i in range(n_machines):
                g = df[df.machine == i]
                a = g[g.run == run].set_index("seed")[metric]
                b = g[g.run == f"{run}-tcm"].set_index("seed")[metric]
                seeds = sorted(set(a.index) & set(b.index))
                d = paired_difference(a[seeds].to_numpy(), b[seeds].to_numpy())
                verdict = "lower" if d.high < 0 else "higher" if d.low > 0 else "no difference"
                row[f"machine {i}"] = f"{verdict}: {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
                row.setdefault("verdicts", []).append(verdict)
            row["agree"] = "yes" if len(set(row.pop("verdicts"))) == 1 else "NO"
            rows.append(row)
    if not rows:
        return []
    return ["## Verdicts on each machine", "",
            "Paired change with TCM (with - without) over the seeds both runs have, two-sided 95% Student-t "
            "interval; the verdict is lower / higher when the interval excludes 0, else no difference.", "",
            pd.DataFrame(rows).to_markdown(index=False), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)
    p = sub.add_parser("collect", help="the results of this machine's `dvc repro`, without training again")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", required=True)
    p.set_defaults(func=collect)
    p = sub.add_parser("compare")
    p.add_argument("results", nargs="+")
    p.add_argument("--out", default="reports/benchmarks/machine_spread.md")
    p.set_defaults(func=compare)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
