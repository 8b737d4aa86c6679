"""Forward + backward time and peak memory of the losses at the large-batch recipes' batch (4,000 x 512).

    python benchmarks/losses.py                        # cuda if available, else cpu
    python benchmarks/losses.py --device cpu --threads 1 --json reports/benchmarks/losses.json

A regression benchmark: the batch-4000 recipes (RS@k, Smooth-AP; configs/recipes.yaml) must keep
their losses cheap. On random unit embeddings (B x 512, m = 4 images per class) it measures

1. losses: forward + backward of our TCM alone, of each recipe's base loss, and of base + TCM as
   tcm.losses.build_criterion builds it (the recipe's loss params, TCM at its defaults). All run in
   this process, interleaved round after round; the table gives the median round and the min-max.
   Peak memory: on CUDA the rise of torch.cuda.max_memory_allocated over the allocation before the
   call (stats reset per loss); on CPU a fresh subprocess per loss, peak RSS (VmHWM, reset just
   before the call) minus the RSS just before the call. (getrusage's ru_maxrss would do in a fresh
   process, but Linux carries it over exec from the parent, whose RSS is larger.)
2. pytorch-metric-learning's ThresholdConsistentMarginLoss, in its own subprocess per batch size
   (it gathers a copy of both embeddings of every positive and negative pair: memory O(B^2 x dim)),
   capped on CPU by RLIMIT_AS (--pml-cap-gib of new address space), on CUDA by the card (an
   OutOfMemoryError is caught). B = 4000 first, then smaller (--pml-batches) until two sizes have
   run, next to our TCM measured the same way at those sizes; and a value + gradient check of ours
   against pml's on small batches (the definitions match: ordered pairs, means over violating pairs).
3. the chunked training step end to end (tcm.train.train_step with the recipe's chunk_size, loss +
   TCM, Adam) at the recipe's batch (4000, whatever --batch says): on CUDA the recipe's ResNet-50
   (random init) at 224 px, bf16 autocast, channels_last, both recipes; on CPU vit_tiny at 32 px (the
   project's fastest backbone: small_cnn takes ~16 s a step at B = 4000 on 2 cores), RS@k's recipe.
   img/s, and the loss's share of the step (criterion forward + backward on the batch's embeddings,
   timed interleaved with the step, / step).

On CPU the tables also give the process CPU time per call (user + sys, all threads): less moved than
wall time by other jobs on a shared machine.

Imports only torch, numpy, pytorch_metric_learning and tcm (runs on a GPU box without DVC or MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytorch_metric_learning
import torch
import torch.nn.functional as F

from tcm.config import LossConfig, ModelConfig, TCMConfig, deep_merge
from tcm.device import cpu_model
from tcm.losses import ThresholdConsistentMargin, build_criterion
from tcm.strict_yaml import load_yaml

ROOT = Path(__file__).resolve().parents[1]
# The batch-4000 recipes (configs/recipes.yaml): "<dataset>/<backbone>/<loss>".
RECIPES = {"smooth_ap": "inat2018/resnet50/smooth_ap", "rs_at_k": "inat2018/resnet50/rs_at_k"}
LABEL = {"smooth_ap": "Smooth-AP", "rs_at_k": "RS@k"}
DIM = 512
GIB, MIB = 2**30, 2**20
# The issue's figures on an NVIDIA H200 (forward + backward, B = 4000 x 512): a reference to compare
# a CUDA run against, printed beside the table; not measured by this script.
ISSUE_H200 = {"tcm": "9.9 ms / 0.95 GiB", "smooth_ap": "24.1 ms / 0.56 GiB", "rs_at_k": "17.6 ms / 0.43 GiB",
              "pml_tcm": "out of memory on the 139 GiB card"}


# ---------------------------------------------------------------- set-up


def load_recipe(path: Path, key: str) -> dict:
    data = load_yaml(path)
    return deep_merge(data.get("run_defaults") or {}, data["runs"][key])


def make_batch(batch: int, m: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit embeddings (batch x 512) and m-per-class labels, the same for a given (batch, seed)."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(batch, DIM, generator=g), dim=1)
    labels = torch.arange((batch + m - 1) // m).repeat_interleave(m)[:batch]
    return emb.to(device), labels.to(device)


def loss_fn(name: str, recipes: Path) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """name: "tcm", "pml_tcm", "<base>" or "<base>+tcm" with <base> in RECIPES."""
    tcm_cfg = TCMConfig(enabled=True)
    if name == "tcm":
        return ThresholdConsistentMargin(tcm_cfg.pos_margin, tcm_cfg.neg_margin, tcm_cfg.pos_weight,
                                         tcm_cfg.neg_weight)
    if name == "pml_tcm":
        from pytorch_metric_learning.losses import ThresholdConsistentMarginLoss

        return ThresholdConsistentMarginLoss(lambda_plus=tcm_cfg.pos_weight, lambda_minus=tcm_cfg.neg_weight,
                                             margin_plus=tcm_cfg.pos_margin, margin_minus=tcm_cfg.neg_margin)
    base, _, with_tcm = name.partition("+")
    loss_cfg = LossConfig(**load_recipe(recipes, RECIPES[base])["loss"])
    crit = build_criterion(loss_cfg, TCMConfig(enabled=bool(with_tcm)), num_classes=1000, embedding_dim=DIM)
    if with_tcm:
        return lambda e, y: crit(e, y)["loss"]
    return crit.base


def display(name: str) -> str:
    if name == "tcm":
        return "TCM (ours)"
    if name == "pml_tcm":
        return "pml ThresholdConsistentMarginLoss"
    base, _, with_tcm = name.partition("+")
    return LABEL[base] + (" + TCM" if with_tcm else "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd(fn: Callable, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    e = emb.clone().requires_grad_(True)
    loss = fn(e, labels)
    loss.backward()
    return loss


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int:
    """Peak RSS of this process's address space (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over exec from the parent, so a child of a big parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is the call's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    cuda_oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, (MemoryError, cuda_oom)) or "alloc" in text or "out of memory" in text


# ---------------------------------------------------------------- one loss, once (memory)


def measure(name: str, batch: int, m: int, device: torch.device, recipes: Path, reps: int = 0,
            cap_gib: float | None = None) -> dict:
    """Peak memory of one forward + backward (and, with reps, the median time of `reps` more).

    CUDA: in this process, max_memory_allocated over the allocation before the call. CPU: meant for
    a fresh process (subprocess `--child`): ru_maxrss after the call minus the RSS before it."""
    fn = loss_fn(name, recipes)
    small_e, small_y = make_batch(64, m, device)  # lazy init (thread pools, kernels) outside the measurement
    fwd_bwd(fn, small_e, small_y)
    emb, labels = make_batch(batch, m, device)
    rec: dict = {"loss": name, "batch": batch, "device": device.type}
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        rec["hwm_before_mib"] = hwm_bytes() / MIB  # the import's peak, before the reset
        rec["hwm_reset"] = reset_hwm()
        before = rss_bytes()
        rec["rss_before_mib"] = before / MIB
        if cap_gib is not None:  # new address space allowed from here on
            limit = vm_bytes() + int(cap_gib * GIB)
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            rec["cap_gib"] = cap_gib
    try:
        t0 = time.perf_counter()
        loss = fwd_bwd(fn, emb, labels)
        sync(device)
        rec["first_ms"] = 1000 * (time.perf_counter() - t0)
        rec["value"] = float(loss.detach())
        del loss
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fwd_bwd(fn, emb, labels)
            sync(device)
            times.append(1000 * (time.perf_counter() - t0))
        if times:
            rec["median_ms"] = statistics.median(times)
    except Exception as e:  # out of memory is the expected failure; anything else is reported too
        rec["error"] = ("out of memory: " if is_oom(e) else "") + str(e).strip().splitlines()[0][:300]
        rec["oom"] = is_oom(e)
        asked = re.search(r"allocate (\d+) bytes|allocate ([\d.]+) GiB", str(e), re.IGNORECASE)
        if asked:
            rec["failed_alloc_gib"] = int(asked[1]) / GIB if asked[1] else float(asked[2])
    if device.type == "cuda":
        rec["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / MIB
    else:
        rec["peak_mib"] = (hwm_bytes() - before) / MIB
    return rec


def measure_in_child(name: str, batch: int, m: int, device: torch.device, recipes: Path, reps: int = 0,
                     cap_gib: float | None = None, timeout: int = 600) -> dict:
    spec = {"name": name, "batch": batch, "m": m, "device": str(device), "recipes": str(recipes), "reps": reps,
            "cap_gib": cap_gib, "threads": torch.get_num_threads()}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"loss": name, "batch": batch, "error": f"timeout after {timeout} s"}
    lines = r.stdout.strip().splitlines()
    if r.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = (r.stderr.strip().splitlines() or ["?"])[-1]
    return {"loss": name, "batch": batch, "error": f"exit {r.returncode}: {err[:200]}",
            "oom": r.returncode in (-9, 137) or "alloc" in err.lower() or "memory" in err.lower()}


def child(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])  # the parent's
    device = torch.device(spec["device"])
    rec = measure(spec["name"], spec["batch"], spec["m"], device, Path(spec["recipes"]), spec["reps"],
                  spec["cap_gib"] if device.type == "cpu" else None)
    print(json.dumps(rec), flush=True)


def memory(name: str, batch: int, m: int, device: torch.device, recipes: Path, reps: int = 0) -> dict:
    if device.type == "cuda":
        return measure(name, batch, m, device, recipes, reps)
    return measure_in_child(name, batch, m, device, recipes, reps)


# ---------------------------------------------------------------- timing, interleaved


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int,
                target_s: float, cpu_times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds per call of each fn (and process CPU seconds per call into ``cpu_times``): warm-up,
    then `rounds` rounds of every fn in turn; on fast devices each round repeats a fn until it has
    run ~target_s."""
    reps = {}
    for name, fn in fns.items():
        for _ in range(2):  # the first call warms up; a slow one (>= target_s) needs no second
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            took = time.perf_counter() - t0
            if took >= target_s:
                break
        reps[name] = max(1, min(50, round(target_s / max(took, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps[name]):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / reps[name])
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append((time.process_time() - c0) / reps[name])
    return times


def summary(ts: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(ts), "min_ms": 1000 * min(ts), "max_ms": 1000 * max(ts),
            "rounds": len(ts)}


# ---------------------------------------------------------------- the three parts


def bench_losses(names: list[str], args: argparse.Namespace, device: torch.device) -> list[dict]:
    emb, labels = make_batch(args.batch, args.m, device)
    fns = {n: loss_fn(n, args.recipes) for n in names}
    cpu: dict[str, list[float]] = {}
    times = interleaved({n: (lambda f=f: fwd_bwd(f, emb, labels)) for n, f in fns.items()}, device,
                        args.rounds, args.target_s, cpu)
    rows = []
    for n in names:
        mem = memory(n, args.batch, args.m, device, args.recipes)
        rows.append({"loss": n, "name": display(n), "batch": args.batch, **summary(times[n]),
                     "cpu_median_ms": 1000 * statistics.median(cpu[n]),
                     "peak_mib": mem.get("peak_mib"), "memory_error": mem.get("error")})
    return rows


def bench_pml(args: argparse.Namespace, device: torch.device) -> dict:
    """pml's TCM at decreasing batch sizes until two have run, ours at the same sizes; value check."""
    runs, ok = [], 0
    for b in args.pml_batches:
        theirs = measure_in_child("pml_tcm", b, args.m, device, args.recipes, reps=args.pml_reps,
                                  cap_gib=args.pml_cap_gib)
        row = {"batch": b, "pml": theirs}
        if "error" not in theirs:
            row["ours"] = measure_in_child("tcm", b, args.m, device, args.recipes, reps=args.pml_reps) \
                if device.type == "cpu" else measure("tcm", b, args.m, device, args.recipes, args.pml_reps)
            ok += 1
        runs.append(row)
        print(f"#   pml TCM at B={b}: " + (theirs["error"][:160] if "error" in theirs else
                                            f"{theirs['peak_mib']:.0f} MiB, {theirs.get('median_ms', 0):.1f} ms"),
              flush=True)
        if ok == 2:
            break
    # Same loss value and gradient on small batches (m-per-class and random labels).
    checks = []
    ours_fn, pml_fn = loss_fn("tcm", args.recipes), loss_fn("pml_tcm", args.recipes)
    for b, random_labels in ((64, False), (256, False), (200, True)):
        emb, labels = make_batch(b, args.m, device, seed=b)
        if random_labels:
            labels = torch.randint(0, b // 3, (b,), generator=torch.Generator().manual_seed(b)).to(device)
        e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
        lo, lp = ours_fn(e1, labels), pml_fn(e2, labels)
        lo.backward()
        lp.backward()
        vo, vp = lo.item(), lp.item()
        checks.append({"batch": b, "labels": "random" if random_labels else f"m={args.m}", "ours": vo,
                       "pml": vp, "abs_diff": abs(vo - vp),
                       "grad_max_abs_diff": float((e1.grad - e2.grad).abs().max())})
    return {"runs": runs, "value_checks": checks, "cap_gib": args.pml_cap_gib if device.type == "cpu" else None}


def bench_step(base: str, args: argparse.Namespace, device: torch.device) -> dict:
    from tcm.models import build_model
    from tcm.train import train_step

    recipe = load_recipe(args.recipes, RECIPES[base])
    batch, chunk = recipe["train"]["batch_size"], recipe["train"].get("chunk_size")
    cuda = device.type == "cuda"
    if cuda:  # the recipe's model, random init (no weights on an offline box)
        model_cfg = ModelConfig(**{**recipe["model"], "pretrained": False})
        size = args.step_size or 224
    else:
        model_cfg = ModelConfig(backbone="vit_tiny", embedding_dim=DIM,
                                head_layernorm=recipe["model"].get("head_layernorm", False))
        size = 32  # vit_tiny's only input size
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    model.train()
    x = torch.randn(batch, 3, size, size, device=device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(batch // args.m).repeat_interleave(args.m).to(device)
    crit = build_criterion(LossConfig(**recipe["loss"]), TCMConfig(enabled=True), batch // args.m, DIM)
    crit.base.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=recipe["train"]["lr"])
    emb, _ = make_batch(batch, args.m, device)

    def step() -> None:
        float(train_step(model, crit, opt, x, labels, autocast=cuda, chunk_size=chunk)["loss"])

    def criterion() -> None:
        e = emb.clone().requires_grad_(True)
        crit(e, labels)["loss"].backward()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = interleaved({"step": step, "criterion": criterion}, device, args.step_rounds, 0.0)
    s, c = statistics.median(times["step"]), statistics.median(times["criterion"])
    return {"recipe": RECIPES[base], "loss": f"{LABEL[base]} + TCM", "backbone": model_cfg.backbone, "size": size,
            "batch": batch, "chunk_size": chunk, "autocast_bf16": cuda, "channels_last": cuda,
            "step_ms": 1000 * s, "step_min_ms": 1000 * min(times["step"]), "step_max_ms": 1000 * max(times["step"]),
            "img_per_s": batch / s, "criterion_ms": 1000 * c, "loss_share_pct": 100 * c / s,
            "peak_gib": torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
            "rounds": args.step_rounds}


# ---------------------------------------------------------------- output


def cpu_pressure() -> str:
    """Linux PSI: share of time some runnable task waited for a CPU (other jobs on a shared machine)."""
    try:
        some = open("/proc/pressure/cpu").readline().split()[1:4]
        return " ".join(some)
    except (OSError, IndexError):
        return "n/a"


def machine(device: torch.device) -> dict:
    cpu = cpu_model()
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = []
    return {"cpu": cpu, "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_metric_learning": pytorch_metric_learning.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "loadavg": " ".join(load), "cpu_pressure": cpu_pressure()}


def fmt_mem(mib: float | None) -> str:
    if mib is None:
        return "-"
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def print_tables(out: dict) -> None:
    dev = out["machine"]["device"]
    how = "max_memory_allocated rise" if dev.startswith("cuda") else "peak RSS rise, fresh process"
    print(f"\n## Losses, forward + backward, B = {out['args']['batch']} x {DIM}, m = {out['args']['m']}, {dev}\n")
    on_cpu = dev == "cpu"
    cpu_col = " CPU ms (process) |" if on_cpu else ""
    print(f"| loss | median ms | min-max ms | rounds |{cpu_col} peak memory ({how}) | "
          "issue's H200 figure (reference) |")
    print("|---|---|---|---|---|---|" + ("---|" if on_cpu else ""))
    for r in out["losses"]:
        mem = fmt_mem(r["peak_mib"]) if not r.get("memory_error") else f"error: {r['memory_error']}"
        ref = ISSUE_H200.get(r["loss"], "-") if out["args"]["batch"] == 4000 else "-"
        cpu = f" {r['cpu_median_ms']:.0f} |" if on_cpu else ""
        print(f"| {r['name']} | {r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | {r['rounds']} |{cpu} "
              f"{mem} | {ref} |")

    pml = out.get("pml")
    if pml:
        cap = f", cap {pml['cap_gib']} GiB of new address space (RLIMIT_AS)" if pml["cap_gib"] else ""
        print(f"\n## pml ThresholdConsistentMarginLoss vs ours (own subprocess per B{cap})\n")
        print("| B | pml | pml ms | pml peak | ours ms | ours peak | pml / ours memory | loss value pml / ours |")
        print("|---|---|---|---|---|---|---|---|")
        for r in pml["runs"]:
            p, o = r["pml"], r.get("ours")
            if "error" in p:
                what = "out of memory" if p.get("oom") else p["error"][:90]
                if p.get("failed_alloc_gib"):
                    what += f" (an allocation of {p['failed_alloc_gib']:.1f} GiB failed)"
                print(f"| {r['batch']} | fails: {what} | - | - | - | - | - | - |")
                continue
            ratio = f"{p['peak_mib'] / o['peak_mib']:.0f}x" if o and o.get("peak_mib") else "-"
            values = f"{p['value']:.6f} / {o['value']:.6f}" if o and "value" in o else "-"
            print(f"| {r['batch']} | runs | {p.get('median_ms', p['first_ms']):.1f} | {fmt_mem(p['peak_mib'])} | "
                  f"{o.get('median_ms', o.get('first_ms', 0)):.1f} | {fmt_mem(o.get('peak_mib'))} | {ratio} | "
                  f"{values} |")
        print("\nValue check, ours vs pml (TCM defaults m+ = 0.9, m- = 0.5, lambda = 1):\n")
        print("| B | labels | ours | pml | abs diff | max abs grad diff |")
        print("|---|---|---|---|---|---|")
        for c in pml["value_checks"]:
            print(f"| {c['batch']} | {c['labels']} | {c['ours']:.6f} | {c['pml']:.6f} | {c['abs_diff']:.1e} | "
                  f"{c['grad_max_abs_diff']:.1e} |")

    if out.get("steps"):
        print("\n## Chunked training step (tcm.train.train_step), loss + TCM, Adam\n")
        print("| recipe | backbone | px | B | chunk | bf16 + channels_last | step s (min-max) | img/s | "
              "criterion ms | loss share | TCM alone share |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        tcm_ms = next((r["median_ms"] for r in out["losses"] if r["loss"] == "tcm"), None)
        for s in out["steps"]:
            tcm_share = f"{100 * tcm_ms / s['step_ms']:.1f} %" if tcm_ms and s["batch"] == out["args"]["batch"] \
                else "-"
            print(f"| {s['recipe']} | {s['backbone']} | {s['size']} | {s['batch']} | {s['chunk_size']} | "
                  f"{'yes' if s['autocast_bf16'] else 'no'} | {s['step_ms'] / 1000:.2f} "
                  f"({s['step_min_ms'] / 1000:.2f}-{s['step_max_ms'] / 1000:.2f}) | {s['img_per_s']:.0f} | "
                  f"{s['criterion_ms']:.0f} | {s['loss_share_pct']:.1f} % | {tcm_share} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--m", type=int, default=4, help="images per class")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default: 7 on CUDA, 3 on CPU)")
    ap.add_argument("--target-s", type=float, default=0.2, help="seconds per loss per round (repeats fast calls)")
    ap.add_argument("--losses", nargs="+", default=["tcm", "smooth_ap", "smooth_ap+tcm", "rs_at_k", "rs_at_k+tcm"])
    ap.add_argument("--pml-batches", type=int, nargs="+", default=[4000, 2000, 1000, 500, 250])
    ap.add_argument("--pml-cap-gib", type=float, default=8.0, help="CPU only: address space the pml child may add")
    ap.add_argument("--pml-reps", type=int, default=2, help="timed calls after the first")
    ap.add_argument("--no-pml", action="store_true")
    ap.add_argument("--steps", nargs="*", default=None, choices=list(RECIPES),
                    help="recipes whose chunked training step is timed (default: both on CUDA, rs_at_k on CPU; "
                         "none given: skip)")
    ap.add_argument("--step-rounds", type=int, default=3)
    ap.add_argument("--step-size", type=int, default=None, help="CUDA image size (default 224)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's). 1 on a shared CPU: with 2 threads on 2 busy "
                         "cores every parallel op waits for the descheduled thread, and timings swing by 10x")
    ap.add_argument("--recipes", type=Path, default=ROOT / "configs" / "recipes.yaml")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.rounds is None:
        args.rounds = 7 if device.type == "cuda" else 3
    if args.steps is None:
        args.steps = list(RECIPES) if device.type == "cuda" else ["rs_at_k"]
    t_start = time.perf_counter()
    out: dict = {"machine": machine(device),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"}}
    mc = out["machine"]
    print(f"# torch {mc['torch']}, pytorch-metric-learning {mc['pytorch_metric_learning']}, python {mc['python']}, "
          f"{mc['device']} ({mc['device_name']}), CPU {mc['cpu']}, nproc {mc['nproc']}, "
          f"torch threads {mc['torch_threads']}, loadavg {mc['loadavg']}, CPU pressure {mc['cpu_pressure']}",
          flush=True)
    print("# losses ...", flush=True)
    out["losses"] = bench_losses(args.losses, args, device)
    if not args.no_pml:
        print("# pml ThresholdConsistentMarginLoss ...", flush=True)
        out["pml"] = bench_pml(args, device)
    out["steps"] = []
    for base in args.steps:
        print(f"# training step, {RECIPES[base]} ...", flush=True)
        out["steps"].append(bench_step(base, args, device))
    out["wall_s"] = time.perf_counter() - t_start
    out["machine"]["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    out["machine"]["cpu_pressure_end"] = cpu_pressure()
    print_tables(out)
    print(f"\n# wall {out['wall_s']:.0f} s, loadavg at end {out['machine']['loadavg_end']}, "
          f"CPU pressure at end {out['machine']['cpu_pressure_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
