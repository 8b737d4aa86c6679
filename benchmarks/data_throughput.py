"""Images per second delivered by the training data pipeline (ManifestDataset + train_transform +
DataLoader), originals (full-size synthetic JPEGs, ~500x375 like CUB) against copies re-encoded to
short side 256, for a few worker counts. A script, not a test:

    python benchmarks/data_throughput.py                       # 1 and 2 workers
    python benchmarks/data_throughput.py --workers 1 2 8 16    # on a bigger machine
    python benchmarks/data_throughput.py --write reports/benchmarks/data.md

Each setting runs ``--epochs`` passes over the train split with persistent workers; the first pass
is a warm-up (worker start, page cache) and is not counted. Throughput = images / seconds over the
remaining passes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import PIL
import torch
from torch.utils.data import DataLoader

from tcm.config import DatasetConfig
from tcm.data import ManifestDataset, read_manifest
from tcm.data.preprocess import preprocess_manifest
from tcm.data.specs import prepare_benchmark
from tcm.data.synthetic import make_tiny_cub
from tcm.data.transforms import train_transform
from tcm.device import cpu_model


def measure(manifest_dir: Path, workers: int, batch_size: int, epochs: int) -> float:
    cfg = DatasetConfig(source="cub")  # the benchmark defaults: RandomResizedCrop(224, scale 0.08-1) + flip
    dataset = ManifestDataset(read_manifest(manifest_dir), "train", train_transform(cfg))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=False,
                        persistent_workers=workers > 0)
    times = []
    for _ in range(epochs):
        start, n = time.perf_counter(), 0
        for x, _ in loader:
            n += x.shape[0]
        times.append((n, time.perf_counter() - start))
    counted = times[1:] or times
    return sum(n for n, _ in counted) / sum(t for _, t in counted)


def per_image_ms(manifest_dir: Path, limit: int = 128) -> tuple[float, float]:
    """(decode, decode + train transform) milliseconds per image in this process, one torch thread
    (as in a DataLoader worker): the cost split that explains the throughput."""
    from PIL import Image

    torch.set_num_threads(1)
    manifest = read_manifest(manifest_dir)
    paths = [manifest.image_root / p for p in manifest.split("train").path[:limit]]
    transform = train_transform(DatasetConfig(source="cub"))
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            img.convert("RGB")
    decode = time.perf_counter() - start
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            transform(img.convert("RGB"))
    total = time.perf_counter() - start
    return 1e3 * decode / len(paths), 1e3 * total / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=8, help="classes (half train, half test)")
    ap.add_argument("--per-class", type=int, default=64, help="images per class")
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), help="image width height")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3, help="passes per setting; the first is a warm-up")
    ap.add_argument("--repeats", type=int, default=3, help="repeat each setting, report the median")
    ap.add_argument("--write", type=Path, help="write the results as a markdown report here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folder = make_tiny_cub(tmp / "raw", n_classes=args.classes, per_class=args.per_class, size=tuple(args.size))
        original = prepare_benchmark("cub", folder, tmp / "original", allow_nonstandard_counts=True).parent
        t1 = time.perf_counter()
        small = preprocess_manifest(original, tmp / "s256", short_side=256).parent
        t2 = time.perf_counter()
        n_train = len(read_manifest(original).split("train"))
        mb = {name: sum(f.stat().st_size for f in Path(d).rglob("*.jpg")) / 1e6
              for name, d in (("original", folder / "images"), ("s256", small / "images"))}

        rows = []
        load_before = os.getloadavg()[0]
        settings = [(name, d, w) for w in args.workers
                    for name, d in (("originals (500x375)", original), ("short side 256", small))]
        rates: dict[tuple[str, int], list[float]] = {(n, w): [] for n, _, w in settings}
        # Repeats interleave the settings, so a change in background load hits all of them alike.
        for _ in range(args.repeats):
            for name, d, workers in settings:
                rates[name, workers].append(measure(d, workers, args.batch_size, args.epochs))
                print(f"{name:22s} workers={workers:2d}  {rates[name, workers][-1]:7.1f} img/s", flush=True)
        for (name, workers), r in rates.items():
            rows.append((name, workers, statistics.median(r), min(r), max(r)))
        costs = {name: min((per_image_ms(d) for _ in range(3)), key=lambda c: c[1])
                 for name, d in (("originals (500x375)", original), ("short side 256", small))}
        for name, (dec, tot) in costs.items():
            print(f"{name:22s} one process: decode {dec:.2f} ms/img, decode + transform {tot:.2f} ms/img")

    load = os.getloadavg()[0]
    machine = (f"{os.cpu_count()} CPU cores (`nproc`), {cpu_model()}; Python {platform.python_version()}, "
               f"torch {torch.__version__}, Pillow {PIL.__version__}; CPU only; 1-minute load average "
               f"{load_before:.1f} before and {load:.1f} after the measurements (other jobs shared the machine)")
    print(machine)
    if args.write:
        lines = [
            "| images | DataLoader workers | images/s (median) | min | max |",
            "|---|---:|---:|---:|---:|",
            *(f"| {n} | {w} | {m:.1f} | {lo:.1f} | {hi:.1f} |" for n, w, m, lo, hi in rows),
            "",
            "Per image in one process with one torch thread (best of 3), the cost behind the figures above:",
            "",
            "| images | decode (ms) | decode + train transform (ms) |",
            "|---|---:|---:|",
            *(f"| {n} | {dec:.2f} | {tot:.2f} |" for n, (dec, tot) in costs.items()),
        ]
        setup = (f"{n_train} train images of {args.size[0]}x{args.size[1]} px (synthetic JPEG, quality 90; "
                 f"{mb['original']:.1f} MB originals vs {mb['s256']:.1f} MB at short side 256), batch size "
                 f"{args.batch_size}, train transform RandomResizedCrop(224, scale=(0.08, 1)) + flip + ToTensor + "
                 f"Normalize, {args.epochs} passes per setting of which the first is a warm-up, median of "
                 f"{args.repeats} repeats. Preprocessing the {2 * n_train} images took {t2 - t1:.1f} s "
                 f"(writing the originals {t1 - t0:.1f} s).")
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(REPORT.format(machine=machine, setup=setup, table="\n".join(lines),
                                            reading=reading(rows, costs)))
        print(f"wrote {args.write}")


REPORT = """# Data pipeline throughput

Measured with `python benchmarks/data_throughput.py --write reports/benchmarks/data.md`.

**Machine:** {machine}. No GPU machine was available for this task, so there is no 16-core
figure; rerun the script there with `--workers 1 2 8 16`.

**Setup:** {setup}

{table}

**Reading:** {reading} Images/s is what the training loop could consume at most from the data side;
the model's forward/backward pass comes on top. Figures taken while other jobs load the machine
(see the load average above) are noisy: compare settings within one run (the repeats interleave
them), not across runs. Preprocessing is not the same as training on the originals (docs/data.md).
"""


def reading(rows: list[tuple], costs: dict[str, tuple[float, float]]) -> str:
    (dec_o, tot_o), (dec_s, tot_s) = costs.values()
    parts = [f"Decoding is {dec_o / tot_o:.0%} of the per-image cost of the originals and {dec_s / tot_s:.0%} at "
             f"short side 256; preprocessing cuts the per-image cost {tot_o / tot_s:.1f}x in one process."]
    medians = {(n, w): m for n, w, m, _, _ in rows}
    names = list(costs)
    for w in sorted({w for _, w in medians}):
        parts.append(f"With {w} worker{'s' if w > 1 else ''} the DataLoader delivers "
                     f"{medians[names[1], w] / medians[names[0], w]:.2f}x the images/s of the originals.")
    return " ".join(parts)


if __name__ == "__main__":
    main()
