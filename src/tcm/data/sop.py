"""Stanford Online Products: ``Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <super>_final/}``.

Each index file has the header ``image_id class_id super_class_id path`` and one image per line,
e.g. ``1 1 1 bicycle_final/111085122871_0.JPG``. The files are the open-world split (classes
1-11,318 train, 11,319-22,634 test). Labels are the official class ids.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tcm.data.problems import Problems
from tcm.data.specs import INTEGER, Benchmark, label_problem, read_lines

HEADER = ["image_id", "class_id", "super_class_id", "path"]

FETCH_HELP = (
    "No stable public download exists (the original ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip "
    "is dead and the mirrors need an account or Google Drive): fetch Stanford_Online_Products.zip (about 3 GB) "
    "yourself and extract it into ROOT, giving ROOT/Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt and the "
    "twelve <category>_final/ image folders; see docs/data.md."
)


def parse(folder: Path) -> pd.DataFrame:
    problems = Problems(f"sop at {folder}")
    rows = []
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        lines = read_lines(folder / name)
        if not lines or lines[0][1].split() != HEADER:
            got = lines[0][1] if lines else "an empty file"
            problems.add(f"{folder / name} line 1: expected the header {' '.join(HEADER)!r}, got {got!r}")
            continue
        if len(lines) == 1:
            problems.add(f"{folder / name}: no images listed after the header (truncated or emptied file?)")
        for n, line in lines[1:]:
            parts = line.split()
            if len(parts) != 4 or not all(INTEGER.fullmatch(p) for p in parts[:3]):
                problems.add(f"{folder / name} line {n}: expected '<image_id> <class_id> <super_class_id> <path>', "
                             f"got {line!r}")
                continue
            why = label_problem(int(parts[1]))
            if why:
                problems.add(f"{folder / name} line {n}: {why}")
                continue
            rows.append((parts[3], int(parts[1]), split))
    problems.raise_if_any()
    return pd.DataFrame(rows, columns=["path", "label", "split"])


BENCHMARK = Benchmark(
    name="sop",
    title="Stanford Online Products",
    markers=("Ebay_train.txt",),
    subdirs=("Stanford_Online_Products",),
    counts={"train": (59_551, 11_318), "test": (60_502, 11_316)},
    parse=parse,
    fetch_help=FETCH_HELP,
)
