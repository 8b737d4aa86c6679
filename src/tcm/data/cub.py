"""CUB-200-2011: ``CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/}``.

Open-world split (metric-learning convention, not the file's train_test_split.txt): classes 1-100
train, 101-200 test. Labels are the official class ids.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tcm.data.download import Download
from tcm.data.problems import Problems
from tcm.data.specs import INTEGER, Benchmark, label_problem, read_lines

# CaltechDATA record 65de6-vp158 (the archive's current home; the old vision.caltech.edu address is gone).
# Size and SHA-256 as published in tensorflow/datasets (url_checksums/caltech_birds2011.txt) and in
# torchvision's prototype CUB200 resource for the same archive; its widely quoted MD5 is
# 97eceeb196236b17998738112f37df78. Caltech itself publishes only the MD5 on the record page.
DOWNLOAD = Download(
    url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    filename="CUB_200_2011.tgz",
    size=1_150_585_339,
    sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
)

FETCH_HELP = (
    "Fetch CUB_200_2011.tgz (1.1 GB) from https://data.caltech.edu/records/65de6-vp158 (or pass --download / "
    "datasets.<name>.download: true) and extract it into ROOT, giving ROOT/CUB_200_2011/images.txt, "
    "image_class_labels.txt, classes.txt and images/<class>/<file>.jpg; see docs/data.md."
)


def _index(problems: Problems, path: Path) -> list[tuple[int, str]]:
    lines = read_lines(path)
    if not lines:
        # Checked here: an empty table would otherwise fail later, as a confusing error about the output.
        problems.add(f"{path}: lists nothing (empty file; extract CUB_200_2011.tgz again)")
    return lines


def parse(folder: Path) -> pd.DataFrame:
    problems = Problems(f"cub at {folder}")
    images: dict[int, str] = {}
    for n, line in _index(problems, folder / "images.txt"):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not INTEGER.fullmatch(parts[0]):
            problems.add(f"{folder / 'images.txt'} line {n}: expected '<image_id> <image_name>', got {line!r}")
            continue
        why = label_problem(int(parts[0]), "image id")
        if why:
            problems.add(f"{folder / 'images.txt'} line {n}: {why}")
            continue
        if int(parts[0]) in images:
            problems.add(f"{folder / 'images.txt'} line {n}: image id {parts[0]} appears twice")
        images[int(parts[0])] = parts[1]
    classes: dict[int, str] = {}
    for n, line in _index(problems, folder / "classes.txt"):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not INTEGER.fullmatch(parts[0]):
            problems.add(f"{folder / 'classes.txt'} line {n}: expected '<class_id> <class_name>', got {line!r}")
            continue
        why = label_problem(int(parts[0]))
        if why:  # class ids are the labels
            problems.add(f"{folder / 'classes.txt'} line {n}: {why}")
            continue
        classes[int(parts[0])] = parts[1]
    labels: dict[int, int] = {}
    for n, line in _index(problems, folder / "image_class_labels.txt"):
        parts = line.split()
        if len(parts) != 2 or not all(INTEGER.fullmatch(p) for p in parts):
            problems.add(f"{folder / 'image_class_labels.txt'} line {n}: expected '<image_id> <class_id>', "
                         f"got {line!r}")
            continue
        image_id, class_id = map(int, parts)
        if image_id not in images:
            problems.add(f"{folder / 'image_class_labels.txt'} line {n}: image id {image_id} is not in images.txt")
        elif class_id not in classes:
            problems.add(f"{folder / 'image_class_labels.txt'} line {n}: class id {class_id} is not in classes.txt")
        labels[image_id] = class_id
    unlabelled = sorted(set(images) - set(labels))
    problems.extend(f"{folder / 'images.txt'}: image id {i} has no line in image_class_labels.txt" for i in unlabelled)
    problems.raise_if_any()
    # Lower half of the class ids train: 1-100 of the 200 classes (and likewise for tiny copies).
    n_train = len(classes) // 2
    rows = [(f"images/{images[i]}", labels[i], "train" if labels[i] <= n_train else "test") for i in sorted(images)]
    return pd.DataFrame(rows, columns=["path", "label", "split"])


BENCHMARK = Benchmark(
    name="cub",
    title="CUB-200-2011",
    markers=("image_class_labels.txt",),
    subdirs=("CUB_200_2011",),
    counts={"train": (5_864, 100), "test": (5_924, 100)},
    parse=parse,
    fetch_help=FETCH_HELP,
    download=DOWNLOAD,
)
