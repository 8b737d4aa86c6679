#!/usr/bin/env bash
# Checks the resume promise as a user meets it (not a test: it takes minutes): `dvc repro` of a
# reduced default (2 runs x 2 seeds x 3 epochs) in one clone; in another, the same `dvc repro`
# killed with SIGKILL (its whole process group) during seed 1 of the first run, then `dvc repro`
# again. Prints, per run and seed, whether weights and metrics are identical.
#   bash benchmarks/kill_resume.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/.venv/bin/activate"
export KT=$(mktemp -d)
for c in a b; do
  git clone -q "$REPO" $KT/$c
  python - $KT/$c "$REPO/tests" <<'PY'
import sys, pathlib; sys.path.insert(0, sys.argv[2])
from conftest import tiny_params, write_params
p = tiny_params(("digits-ms", "digits-ms-tcm"), epochs=3, seeds=(0, 1))
p["run_defaults"]["train"]["samples_per_epoch"] = 480
write_params(pathlib.Path(sys.argv[1]) / "params.yaml", p)
PY
done
cd $KT/a && dvc repro -q > repro.log 2>&1 && echo "a: uninterrupted repro done"
cd $KT/b
setsid dvc repro > repro1.log 2>&1 &
pid=$!
python - <<'PY'
import time, torch, pathlib
p = pathlib.Path("runs/digits-ms/train/seed-1/checkpoint.pt")
t0 = time.time()
while time.time() - t0 < 600:
    try:
        if p.is_file() and torch.load(p, weights_only=True)["epoch"] >= 1:
            break
    except Exception:
        pass
    time.sleep(0.05)
print("seed 1 checkpoint at epoch", torch.load(p, weights_only=True)["epoch"])
PY
kill -9 -- -$pid || true
sleep 2
echo "after kill: processes left: $(pgrep -f 'papermill|ipykernel' | wc -l)"
dvc repro > repro2.log 2>&1
grep -h "tcm: " reports/notebooks/train-digits-ms.ipynb | head -5 || true
python - <<'PY'
import json, torch, pathlib
import os
a, b = pathlib.Path(os.environ["KT"]) / "a", pathlib.Path(os.environ["KT"]) / "b"
for run in ("digits-ms", "digits-ms-tcm"):
    for seed in (0, 1):
        ca = torch.load(a / f"runs/{run}/train/seed-{seed}/checkpoint.pt", weights_only=True)
        cb = torch.load(b / f"runs/{run}/train/seed-{seed}/checkpoint.pt", weights_only=True)
        same = all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
        ma = json.loads((a / f"runs/{run}/eval/seed-{seed}/metrics.json").read_text())
        mb = json.loads((b / f"runs/{run}/eval/seed-{seed}/metrics.json").read_text())
        print(run, seed, "weights identical:", same, "| OPIS", ma["opis"], mb["opis"], "| R@1", ma["recall_at_k"]["1"], mb["recall_at_k"]["1"], "| metrics identical:", ma == mb)
PY
