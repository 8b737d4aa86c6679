"""End-to-end training speed: `tcm train` on generated JPEGs against the bare compiled model step and
the loader alone, in one process tree on one machine. A script, not a test:

    python benchmarks/train_e2e.py                                   # CUDA when present, else a CPU check
    python benchmarks/train_e2e.py --backbones resnet50 vit_b_16 --decode workers device --workers 15
    python benchmarks/train_e2e.py --json reports/benchmarks/train_e2e.json

Needs torch, torchvision and tcm only (no DVC, papermill or MLflow; MLflow is switched off) and no
network (pretrained: false: weights do not change the speed).

Data: a synthetic CUB copy in CUB's real format (JPEGs of --image-size, 341 x 256 by default), prepared
by `tcm data prepare`; an epoch draws --samples images with the m-per-class sampler (m = 4).

Per backbone:
- bare:     compiled model (channels_last, bf16 autocast), Adam, a trivial loss (sum of the
            embeddings), on a uint8 batch already on the device normalised there: the most any input
            pipeline can reach;
- loader:   the train DataLoader alone (workers' crops, or bytes then decoding on the device), with
            the batch moved to the device and normalised, for each --decode;
- tcm train: the real command in a subprocess (MultiSimilarity + miner + TCM, the loop with its
            checkpoints), per --decode; img/s = the median of the epochs after the first (the first
            includes compilation), from history.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BATCH_DEFAULT = {"resnet50": 256, "vit_b_16": 128}


def params_for(data_root: Path, args: argparse.Namespace, backbone: str, decode: str, device: str) -> dict:
    batch = args.batch or BATCH_DEFAULT.get(backbone, 64)
    return {
        "paths": {"data": "data", "runs": "runs", "reports": "reports"},
        "mlflow": {"enabled": False},
        "datasets": {"cub": {"source": "cub", "root": str(data_root), "allow_nonstandard_counts": True,
                             "image_size": args.image_size, "resize": int(args.image_size * 8 / 7)}},
        "run_defaults": {
            "model": {"backbone": backbone, "embedding_dim": 512, "pretrained": False},
            "loss": {"name": "multi_similarity"},
            "tcm": {"enabled": True},
            "train": {"epochs": args.epochs, "batch_size": batch, "m_per_class": 4,
                      "samples_per_epoch": args.samples, "num_workers": args.workers, "device": device,
                      "decode": decode, "compile": args.compile, "seeds": [0]},
        },
        "runs": {"bench": {"dataset": "cub"}},
    }


def make_data(root: Path, args: argparse.Namespace) -> Path:
    from tcm.data.synthetic import make_tiny

    # Twice the train classes: the lower half of the class ids trains (open world).
    return make_tiny("cub", root, n_classes=2 * args.classes, per_class=args.per_class, size=tuple(args.jpeg_size))


def bare_step(backbone: str, batch: int, size: int, device: torch.device, steps: int, compile_: bool) -> float:
    """img/s of model + trivial loss + Adam on a resident uint8 batch (normalised on the device)."""
    from tcm.config import ModelConfig
    from tcm.data.transforms import normalize
    from tcm.models import build_model

    model = build_model(ModelConfig(backbone=backbone, embedding_dim=512, pretrained=False)).to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    step_model = torch.compile(model) if compile_ else model
    x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)

    def step() -> None:
        x = normalize(x8, channels_last=cuda)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = step_model(x).float().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # compilation and warm-up
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_alone(params_file: Path, decode: str, device: torch.device, batches: int) -> float:
    """img/s of the train loader with the batch on the device and normalised (no model)."""
    from tcm.config import load_config
    from tcm.data import read_manifest
    from tcm.data.batches import input_pipeline
    from tcm.train import make_loader

    cfg = load_config(params_file)
    run = cfg.run("bench")
    pipeline = input_pipeline(read_manifest(cfg.data_dir("cub")), "train", cfg.dataset("cub"), decode, device,
                              train=True)
    loader = make_loader(pipeline.dataset, run, "bench", device, collate_fn=pipeline.collate_fn)
    seen, t0, it = 0, None, iter(loader)
    for i in range(batches + 2):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x = pipeline.to_model(x, device, channels_last=device.type == "cuda")
        if i == 1:  # after the workers' start and the first batch
            _sync(device)
            t0 = time.perf_counter()
        elif i > 1:
            seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - t0)


def _env() -> dict[str, str]:
    """This checkout's tcm first, then whatever PYTHONPATH already holds (carried wheels)."""
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def tcm_train(project: Path) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "tcm.cli", "train", "bench", "--params", "params.yaml"],
                         cwd=project, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"tcm train failed ({out.returncode}):\n{out.stderr[-3000:]}")
    h = pd.read_csv(project / "runs/bench/history.csv")
    later = h.images_per_s[1:] if len(h) > 1 else h.images_per_s
    return {"img_s": float(statistics.median(later)), "epochs_img_s": [round(v, 1) for v in h.images_per_s],
            "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--backbones", nargs="+", default=["resnet50"] if cuda else ["small_cnn"])
    ap.add_argument("--decode", nargs="+", default=["workers", "device"], choices=["workers", "device"])
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--image-size", type=int, default=224 if cuda else 64)
    ap.add_argument("--jpeg-size", type=int, nargs=2, default=[341, 256] if cuda else [96, 72])
    ap.add_argument("--classes", type=int, default=100 if cuda else 16, help="train classes")
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--samples", type=int, default=12800 if cuda else 256, help="images per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="default: 256 ResNet-50, 128 ViT-B/16, else 64")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--compile", default="auto", help="train.compile: auto | true | false")
    ap.add_argument("--bare-steps", type=int, default=20 if cuda else 3)
    ap.add_argument("--loader-batches", type=int, default=30 if cuda else 4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.compile = {"true": True, "false": False}.get(str(args.compile).lower(), "auto")
    device = torch.device(args.device)
    compile_bare = args.compile is True or (args.compile == "auto" and device.type == "cuda")
    facts = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
             else "cpu", "cpu_count": os.cpu_count(), "workers": args.workers, "image_size": args.image_size,
             "jpeg_size": args.jpeg_size, "compile": args.compile}
    print("# " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_root = make_data(Path(tmp) / "raw", args).parent
        for backbone in args.backbones:
            batch = args.batch or BATCH_DEFAULT.get(backbone, 64)
            bare = bare_step(backbone, batch, args.image_size, device, args.bare_steps, compile_bare)
            print(f"{backbone}: bare {'compiled ' if compile_bare else ''}step {bare:.0f} img/s", flush=True)
            for decode in args.decode:
                project = Path(tmp) / f"{backbone}-{decode}"
                project.mkdir()
                params = params_for(data_root, args, backbone, decode, args.device)
                (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                subprocess.run([sys.executable, "-m", "tcm.cli", "data", "prepare", "cub", "--params", "params.yaml"],
                               cwd=project, check=True, capture_output=True,
                               env=_env())
                loader = loader_alone(project / "params.yaml", decode, device, args.loader_batches)
                train = tcm_train(project)
                row = {"backbone": backbone, "batch": batch, "decode": decode, "bare img/s": round(bare, 1),
                       "loader img/s": round(loader, 1), "tcm train img/s": round(train["img_s"], 1),
                       "train / bare": round(train["img_s"] / bare, 3), "epochs img/s": train["epochs_img_s"],
                       "train wall s": train["wall_s"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
