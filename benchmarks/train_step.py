"""Images/s of tcm.train's training step against a bare PyTorch loop, and TCM's share of the step.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py     # small_cnn and a reduced ResNet-50 on a shared CPU
    python benchmarks/train_step.py --models resnet50 --size 224 --batch 256 --device cuda --compile

Same process, model, batch (random tensors, m-per-class labels), loss and optimizer for all
variants; the variants run interleaved, round after round, and the median of the rounds is
reported, so a machine that is busy with other work slows all variants alike. On CUDA every
variant's model and input are channels_last with bf16 autocast (the training loop's settings): a
baseline in another memory format would be a slow baseline. No variant reads the loss on the host
per step (the training loop does not either); each round ends with one synchronisation.

- bare:      emb = model(x); loss = base(emb, y[, miner]); zero_grad; backward; step
- bare trivial: the same with loss = emb.sum(): the model's own step, the ceiling for any loss
- ours:      tcm.train.train_step(model, criterion, optimizer, x, y) with TCM off
- ours+TCM:  the same with TCM on; TCM's share = (ours+TCM - ours) / ours+TCM
- TCM alone: forward + backward of the regularizer on the batch's embeddings, / ours+TCM
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from tcm.config import LossConfig, ModelConfig, TCMConfig
from tcm.device import cpu_model
from tcm.losses import ThresholdConsistentMargin, build_criterion
from tcm.models import build_model
from tcm.train import train_step


def bench(backbone: str, size: int, batch: int, m: int, device: torch.device, rounds: int, steps: int,
          loss: str, compile_: bool = False) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, embedding_dim=512)).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.arange(batch // m).repeat_interleave(m)).to(device)
    autocast = device.type == "cuda"

    crit_plain = build_criterion(LossConfig(name=loss), TCMConfig(enabled=False), batch // m, 512)
    crit_tcm = build_criterion(LossConfig(name=loss), TCMConfig(enabled=True), batch // m, 512)
    models = {k: copy.deepcopy(model) for k in ("bare", "bare trivial", "ours", "ours+TCM")}
    opts = {k: torch.optim.Adam(v.parameters(), lr=1e-5) for k, v in models.items()}
    run = {k: torch.compile(v) if compile_ else v for k, v in models.items()}

    def bare() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            emb = run["bare"](x)
        emb = emb.float()
        tuples = crit_plain.miner(emb, y) if crit_plain.miner is not None else None
        loss_ = crit_plain.base(emb, y, tuples) if tuples is not None else crit_plain.base(emb, y)
        opts["bare"].zero_grad(set_to_none=True)
        loss_.backward()
        opts["bare"].step()

    def bare_trivial() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss_ = run["bare trivial"](x).float().sum()
        opts["bare trivial"].zero_grad(set_to_none=True)
        loss_.backward()
        opts["bare trivial"].step()

    def ours() -> None:
        train_step(run["ours"], crit_plain, opts["ours"], x, y, autocast=autocast, check_finite=False)

    def ours_tcm() -> None:
        train_step(run["ours+TCM"], crit_tcm, opts["ours+TCM"], x, y, autocast=autocast, check_finite=False)

    emb0 = torch.nn.functional.normalize(torch.randn(batch, 512, device=device), dim=1)
    tcm = ThresholdConsistentMargin()

    def tcm_alone() -> None:
        e = emb0.clone().requires_grad_(True)
        loss_ = tcm(e, y)
        loss_.backward()

    variants = {"bare": bare, "bare trivial": bare_trivial, "ours": ours, "ours+TCM": ours_tcm,
                "TCM alone": tcm_alone}
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": backbone, "size": size, "batch": batch, "loss": loss, "compiled": compile_,
        "bare trivial img/s": batch / med["bare trivial"],
        "bare img/s": batch / med["bare"], "ours img/s": batch / med["ours"], "ours+TCM img/s": batch / med["ours+TCM"],
        "overhead %": 100 * (med["ours"] / med["bare"] - 1),
        "TCM share %": 100 * (med["ours+TCM"] - med["ours"]) / med["ours+TCM"],
        "TCM alone % of step": 100 * med["TCM alone"] / med["ours+TCM"],
        "step ms": 1000 * med["ours+TCM"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["small_cnn", "resnet50"])
    ap.add_argument("--size", type=int, nargs="+", default=[32, 96], help="image size per model")
    ap.add_argument("--batch", type=int, nargs="+", default=[80, 32], help="batch per model")
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--loss", default="multi_similarity")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 2], help="steps per round per model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile every variant's model")
    args = ap.parse_args()
    device = torch.device(args.device)
    n = len(args.models)
    pick = lambda xs, i: xs[i] if len(xs) == n else xs[0]  # noqa: E731
    print(f"# torch {torch.__version__}, {device}, threads {torch.get_num_threads()}, CPU {cpu_model()}, "
          f"nproc {__import__('os').cpu_count()}"
          + (f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    rows = [bench(mdl, pick(args.size, i), pick(args.batch, i), args.m, device, args.rounds, pick(args.steps, i),
                  args.loss, args.compile) for i, mdl in enumerate(args.models)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
