"""Benchmark (not a test): the full metric set at SOP and iNaturalist scale vs a bare floor.

    python benchmarks/eval_scale.py [--scales sop inat] [--methods floor ours pml] [--device cpu|cuda]
                                    [--scale-factor 1.0] [--json reports/benchmarks/eval_scale.json] [--append]

``--scale-factor 0.1`` makes every scale 10x smaller (images and classes; same class-size
distribution) for a quick check; ``--device cuda`` runs every method on the GPU (CUDA is
initialised before the clock starts; the GPU's peak memory is reported as ``cuda_peak_gib``);
``--append`` adds this invocation's runs to the existing --json as a further session.

Synthetic clustered embeddings (512-d, L2-normalised, classes grouped under superclasses so the
negative similarities are spread like those of a trained model):
    sop   60,502 images, 11,316 classes of 2-12 images, 12 superclasses, k = 1, 10, 100, 1000
    inat  136,093 images, 2,452 classes (long-tailed sizes, >= 2), 30 superclasses, k = 1, 4, 16, 32

Methods, each in its own subprocess so that its peak RSS is its own:
    floor  chunked matmul + top-K over the same data, same chunk size and K (K = max(max k, R_max)):
           the least any exact Recall@k / MAP@R needs
    ours   tcm.metrics.evaluate_embeddings: Recall@k, MAP@R, R-precision, OPIS, eps-OPIS, curves,
           threshold report
    pml    pytorch-metric-learning AccuracyCalculator(k="max_bin_count") with a batched CustomKNN
           (precision_at_1, MAP@R, R-precision only)
Each child reports wall time, CPU time (user + sys: less sensitive to other load on a shared
machine), peak RSS of the process, and the RSS right after the data were made; the parent samples
the 1-minute load average every 2 s while each child runs (``loadavg_during``: min, mean, max)
and prints a summary table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCALES = {
    "sop": dict(n=60502, classes=11316, min_size=2, max_size=12, supers=12, ks=[1, 10, 100, 1000]),
    "inat": dict(n=136093, classes=2452, min_size=2, max_size=None, supers=30, ks=[1, 4, 16, 32]),
}
DIM, SEED = 512, 0


def class_sizes(spec: dict, rng: np.random.Generator) -> np.ndarray:
    n, c, lo = spec["n"], spec["classes"], spec["min_size"]
    if spec["max_size"] is not None:  # SOP: 2-12 per class, mean ~5.35, skewed to small classes
        w = rng.lognormal(0.0, 0.8, size=c)
        sizes = np.minimum(lo + np.floor(w / w.sum() * (n - lo * c)).astype(int), spec["max_size"])
        while sizes.sum() < n:
            room = np.flatnonzero(sizes < spec["max_size"])
            add = rng.choice(room, size=min(n - sizes.sum(), len(room)), replace=False)
            sizes[add] += 1
        return sizes
    # iNaturalist: long tail (log-normal), at least 2 images, exact total.
    w = rng.lognormal(0.0, 0.9, size=c)
    sizes = lo + np.floor(w / w.sum() * (n - lo * c)).astype(int)
    sizes[np.argsort(-w)[: n - sizes.sum()]] += 1
    return sizes


def spec_of(scale: str, factor: float = 1.0) -> dict:
    """The scale's sizes, images and classes multiplied by ``factor``."""
    spec = dict(SCALES[scale])
    if factor != 1.0:
        spec["n"] = max(4, round(spec["n"] * factor))
        spec["classes"] = max(2, min(spec["n"] // spec["min_size"], round(spec["classes"] * factor)))
    return spec


def make_data(scale: str, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic clustered unit embeddings (float32), filled block by block to keep the peak low."""
    spec = spec_of(scale, factor)
    rng = np.random.default_rng(SEED)
    sizes = class_sizes(spec, rng)
    y = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(y)
    sup = rng.standard_normal((spec["supers"], DIM), dtype=np.float32)
    centres = (0.7 * sup[rng.integers(0, spec["supers"], len(sizes))]
               + rng.standard_normal((len(sizes), DIM), dtype=np.float32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    e = np.empty((len(y), DIM), dtype=np.float32)
    for a in range(0, len(y), 8192):
        b = y[a:a + 8192]
        block = centres[b] + 0.8 / np.sqrt(DIM) * rng.standard_normal((len(b), DIM), dtype=np.float32)
        e[a:a + 8192] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return e, y


def rss_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def rss_now_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(method: str, scale: str, device: str, factor: float = 1.0) -> dict:
    import torch

    from tcm.metrics.inputs import default_chunk_size

    e, y = make_data(scale, factor)
    ks = [k for k in SCALES[scale]["ks"] if k < len(y)]
    dev = torch.device(device)
    if dev.type == "cuda":  # context and cuBLAS start-up stay outside the clock
        torch.ones(8, 8, device=dev).matmul(torch.ones(8, 8, device=dev))
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    chunk = default_chunk_size(len(y), dev)
    k_max = int(min(len(y) - 1, max(max(ks), np.bincount(y).max() - 1)))
    data_rss = rss_now_gib()
    t0, c0 = time.perf_counter(), cpu_seconds()
    if method == "floor":
        x = torch.from_numpy(e).to(dev)
        checksum = 0.0
        for a in range(0, len(y), chunk):
            vals, idx = (x[a:a + chunk] @ x.T).topk(k_max + 1, dim=1)  # + 1: the query itself
            checksum += float(vals[:, 1].sum())
        result = {"checksum": checksum}
    elif method == "ours":
        from tcm.config import EvaluationConfig
        from tcm.metrics import evaluate_embeddings

        m = evaluate_embeddings(e, y, EvaluationConfig(recall_k=ks, device=device, chunk_size=chunk)).metrics
        result = {k: m[k] for k in ("recall_at_k", "map_at_r", "r_precision", "opis", "eps_opis")}
        result["threshold_report"] = {k: m["threshold_report"][k] for k in ("threshold", "overall_far", "overall_frr")}
        result["settings"] = {k: m["settings"][k]
                              for k in ("threshold_resolution", "histogram_window", "histogram_passes")}
    elif method == "pml":
        from pytorch_metric_learning.distances import CosineSimilarity
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import CustomKNN

        ac = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                k="max_bin_count", device=dev, knn_func=CustomKNN(CosineSimilarity(), batch_size=chunk))
        x = torch.from_numpy(e).to(dev)
        result = {k: float(v) for k, v in ac.get_accuracy(x, torch.from_numpy(y).to(dev)).items()}
    else:
        raise SystemExit(f"unknown method {method}")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"method": method, "scale": scale, "device": device, "scale_factor": factor, "n": int(len(y)),
            "classes": int(len(np.unique(y))),
            "max_class": int(np.bincount(y).max()), "k_max": k_max, "chunk": chunk,
            "wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "peak_rss_gib": rss_peak_gib(),
            "data_rss_gib": data_rss, "threads": torch.get_num_threads(),
            "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
            "result": result}


def machine() -> dict:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    import torch

    return {"nproc": sh("nproc"), "free -h": sh("free -h"),
            "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": sh("cat /proc/loadavg")}


def load_1min() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_child(cmd: list[str], timeout: int) -> tuple[subprocess.CompletedProcess | None, list[float]]:
    """Run one child, sampling the 1-minute load average every 2 s; None on timeout."""
    loads = [load_1min()]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        t0 = time.monotonic()
        while True:
            try:
                out, err = proc.communicate(timeout=2)
                break
            except subprocess.TimeoutExpired:
                loads.append(load_1min())
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    proc.communicate()
                    return None, loads
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), loads


def summary(runs: list[dict]) -> str:
    """Plain-text table: every run, with its time and CPU time over its scale's floor."""
    floor = {r["scale"]: r for r in runs if r.get("method") == "floor" and "wall_s" in r}
    head = ("scale", "method", "images", "chunk", "wall s", "CPU s", "wall/floor", "CPU/floor", "peak RSS GiB",
            "GPU peak GiB", "load 1-min min/mean/max")
    rows, errors = [], []
    for r in runs:
        if "wall_s" not in r:
            rows.append((r["scale"], r["method"], "", "", "error"))
            errors.append(f"{r['scale']} {r['method']}: {r.get('error', '?')}")
            continue
        f = floor.get(r["scale"])
        ld = r.get("loadavg_during", {})
        rows.append((r["scale"], r["method"], f"{r['n']:,}", str(r["chunk"]), f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
                     f"{r['wall_s'] / f['wall_s']:.2f}" if f else "-", f"{r['cpu_s'] / f['cpu_s']:.2f}" if f else "-",
                     f"{r['peak_rss_gib']:.2f}", "-" if r.get("cuda_peak_gib") is None else f"{r['cuda_peak_gib']:.2f}",
                     f"{ld.get('min', 0):.2f}/{ld.get('mean', 0):.2f}/{ld.get('max', 0):.2f}"))
    width = [max(len(str(x[i])) for x in (head, *rows) if i < len(x)) for i in range(len(head))]
    table = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(x, width)).rstrip() for x in (head, *rows))
    return "\n".join([table, *errors])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", nargs="+", default=["sop", "inat"], choices=list(SCALES))
    p.add_argument("--methods", nargs="+", default=["floor", "ours", "pml"], choices=["floor", "ours", "pml"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--scale-factor", type=float, default=1.0, help="images and classes x this (quick checks)")
    p.add_argument("--json", default="reports/benchmarks/eval_scale.json")
    p.add_argument("--append", action="store_true",
                   help="keep the runs already in --json and add this invocation's as a further session")
    p.add_argument("--timeout", type=int, default=3600, help="per method, seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--scale", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.scale, args.device, args.scale_factor)), flush=True)
        return
    session = {"machine": machine(), "args": {"scales": args.scales, "methods": args.methods, "device": args.device,
                                              "scale_factor": args.scale_factor}, "runs": []}
    out = session
    if args.append and Path(args.json).exists():
        out = json.loads(Path(args.json).read_text())
        out.setdefault("more_sessions", []).append(session)
    for scale in args.scales:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--child", method, "--scale", scale, "--device", args.device,
                   "--scale-factor", str(args.scale_factor)]
            r, loads = run_child(cmd, args.timeout)
            if r is None:
                rec = {"method": method, "scale": scale, "error": f"timeout after {args.timeout} s"}
            elif r.returncode == 0:
                rec = json.loads(r.stdout.strip().splitlines()[-1])
            else:
                rec = {"method": method, "scale": scale, "error": (r.stderr.strip().splitlines() or ["?"])[-1],
                       "returncode": r.returncode}
            rec["loadavg_during"] = {"min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads),
                                     "samples": len(loads)}
            rec["loadavg_after"] = open("/proc/loadavg").read().strip()
            print(json.dumps(rec), flush=True)
            session["runs"].append(rec)
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}\n")
    print(summary(session["runs"]))


if __name__ == "__main__":
    main()
