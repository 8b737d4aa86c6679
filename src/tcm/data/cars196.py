"""Cars196 (Stanford Cars): ``cars_annos.mat`` beside ``car_ims/``.

``cars_annos.mat`` holds ``annotations``, a 1 x 16,185 struct array with the fields relative_im_path
('car_ims/000001.jpg'), bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1-196) and test (the
classification split, unused here), and ``class_names``, a 1 x 196 cell array. Open-world split:
classes 1-98 train, 99-196 test. Labels are the official class ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tcm.data.manifest import DataError
from tcm.data.problems import Problems
from tcm.data.specs import Benchmark, label_problem

FETCH_HELP = (
    "No stable public download exists (the original addresses under http://imagenet.stanford.edu/internal/car196/ "
    "are dead and the mirrors need an account): fetch the original car_ims.tgz (16,185 JPEGs, about 1.9 GB) and "
    "cars_annos.mat yourself, put cars_annos.mat in ROOT and extract car_ims.tgz there, giving "
    "ROOT/cars_annos.mat and ROOT/car_ims/000001.jpg ... 016185.jpg (the cars_train/cars_test layout of other "
    "mirrors is not this one); see docs/data.md."
)

FIELDS = ("relative_im_path", "class")


def _scalar(value: object) -> object:
    # loadmat wraps every struct field in (nested) arrays: array(['car_ims/000001.jpg']), array([[1]], dtype=uint8).
    arr = np.asarray(value).ravel()
    if arr.size != 1:
        raise ValueError(f"expected one value, got {arr.size}")
    return arr[0].item() if hasattr(arr[0], "item") else arr[0]


def parse(folder: Path) -> pd.DataFrame:
    from scipy.io import loadmat

    mat_path = folder / "cars_annos.mat"
    try:
        mat = loadmat(mat_path)
    except Exception as e:  # noqa: BLE001 - scipy raises several types for a damaged file
        raise DataError(f"{mat_path}: cannot read MATLAB file ({type(e).__name__}: {e})") from None
    ann = mat.get("annotations")
    if ann is None or ann.dtype.names is None or not set(FIELDS) <= set(ann.dtype.names):
        raise DataError(f"{mat_path}: expected a struct array 'annotations' with fields {list(FIELDS)}, "
                        f"found keys {sorted(k for k in mat if not k.startswith('__'))}"
                        + (f" and fields {list(ann.dtype.names)}" if ann is not None and ann.dtype.names else ""))
    problems = Problems(f"cars196 at {folder}")
    # class_names fixes the number of classes when present. An id beyond it means a damaged or mismatched file,
    # never a new class (with allow_nonstandard_counts it would otherwise become a test class unnoticed).
    names = mat.get("class_names")
    n_names = int(np.asarray(names).size) if names is not None else None
    if ann.size == 0:
        problems.add(f"{mat_path}: 'annotations' lists no images")
    rows = []
    for n, entry in enumerate(ann.ravel(), start=1):
        try:
            rel = str(_scalar(entry["relative_im_path"]))
            label = int(_scalar(entry["class"]))
        except (ValueError, TypeError, OverflowError) as e:  # OverflowError: a class stored as inf
            problems.add(f"{mat_path} annotation {n}: malformed entry ({e})")
            continue
        if label < 1:
            problems.add(f"{mat_path} annotation {n}: class id {label} is not positive")
            continue
        if n_names is not None and label > n_names:
            problems.add(f"{mat_path} annotation {n} ({rel}): class id {label} is beyond the {n_names} entries of "
                         "class_names")
            continue
        why = label_problem(label)
        if why:
            problems.add(f"{mat_path} annotation {n} ({rel}): {why}")
            continue
        rows.append((rel, label))
    problems.raise_if_any()
    labels = sorted({label for _, label in rows})
    # Lower half of the class ids train: 1-98 of 196.
    n_classes = n_names if n_names is not None else len(labels)
    n_train = n_classes // 2
    return pd.DataFrame([(rel, label, "train" if label <= n_train else "test") for rel, label in rows],
                        columns=["path", "label", "split"])


BENCHMARK = Benchmark(
    name="cars196",
    title="Cars196",
    markers=("cars_annos.mat",),
    subdirs=("cars196", "CARS196", "stanford_cars", "cars"),
    counts={"train": (8_054, 98), "test": (8_131, 98)},
    parse=parse,
    fetch_help=FETCH_HELP,
)
