"""Benchmark (not a test): the full metric set at SOP and iNaturalist scale vs a bare floor.

    python benchmarks/eval_scale.py [--scales sop inat] [--methods floor ours pml] [--device cpu]
                                    [--json reports/benchmarks/eval_scale.json]

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
machine), peak RSS of the process, and the RSS right after the data were made.
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


def make_data(scale: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic clustered unit embeddings (float32), filled block by block to keep the peak low."""
    spec = SCALES[scale]
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


def child(method: str, scale: str, device: str) -> dict:
    import torch

    from tcm.metrics.inputs import default_chunk_size

    e, y = make_data(scale)
    ks = SCALES[scale]["ks"]
    dev = torch.device(device)
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
        from tcm.metrics import evaluate_embeddings

        m = evaluate_embeddings(e, y, recall_k=ks, device=device, chunk_size=chunk).metrics
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
    return {"method": method, "scale": scale, "device": device, "n": int(len(y)), "classes": int(len(np.unique(y))),
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
            "loadavg_start": sh("cat /proc/loadavg")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", nargs="+", default=["sop", "inat"], choices=list(SCALES))
    p.add_argument("--methods", nargs="+", default=["floor", "ours", "pml"], choices=["floor", "ours", "pml"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="reports/benchmarks/eval_scale.json")
    p.add_argument("--timeout", type=int, default=3600, help="per method, seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--scale", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.scale, args.device)), flush=True)
        return
    out = {"machine": machine(), "runs": []}
    for scale in args.scales:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--child", method, "--scale", scale, "--device", args.device]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                rec = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else \
                    {"method": method, "scale": scale, "error": (r.stderr.strip().splitlines() or ["?"])[-1],
                     "returncode": r.returncode}
            except subprocess.TimeoutExpired:
                rec = {"method": method, "scale": scale, "error": f"timeout after {args.timeout} s"}
            rec["loadavg_after"] = open("/proc/loadavg").read().strip()
            print(json.dumps(rec), flush=True)
            out["runs"].append(rec)
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
