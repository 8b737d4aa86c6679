"""iNaturalist-2018 with the Smooth-AP open-world split: ``train_val2018/`` beside
``Inat_dataset_splits/Inaturalist_{train,test}_set1.txt``.

Each split line is an image path relative to that folder,
``train_val2018/<supercategory>/<category_id>/<file>.jpg``; Smooth-AP (Brown et al., ECCV 2020,
``src/datasets.py``) and RS@k take the class from the two folders above the file. Category ids are
unique across supercategories in iNaturalist-2018, so the label is the category id.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd

from tcm.data.problems import Problems
from tcm.data.specs import INTEGER, Benchmark, label_problem, read_lines

IMAGES, SPLITS = "train_val2018", "Inat_dataset_splits"
SPLIT_FILES = {"train": f"{SPLITS}/Inaturalist_train_set1.txt", "test": f"{SPLITS}/Inaturalist_test_set1.txt"}

FETCH_HELP = (
    "Fetch train_val2018.tar.gz (about 120 GB) from the iNaturalist 2018 competition "
    "(https://github.com/visipedia/inat_comp/tree/master/2018) and extract it into ROOT; the Smooth-AP split files "
    "have no stable public address (a personal Google Drive link in https://github.com/Andrew-Brown1/Smooth_AP): "
    "fetch Inat_dataset_splits.zip yourself and extract it into ROOT, giving ROOT/train_val2018/<supercategory>/"
    "<category_id>/<file>.jpg and ROOT/Inat_dataset_splits/Inaturalist_train_set1.txt and "
    "Inaturalist_test_set1.txt; see docs/data.md."
)


def _split_dir(folder: Path) -> Path:
    # Inat_dataset_splits/ normally sits beside train_val2018/; some copies keep it inside.
    inside = folder / IMAGES / SPLITS
    return inside.parent if not (folder / SPLITS).is_dir() and inside.is_dir() else folder


def refine_root(folder: Path) -> Path:
    """``--root`` given as train_val2018/ itself (split files inside it): the index paths start at its parent."""
    if folder.name == IMAGES and not (folder / IMAGES).is_dir():
        return folder.parent
    return folder


def parse(folder: Path) -> pd.DataFrame:
    problems = Problems(f"inat2018 at {folder}")
    rows = []
    supercategory: dict[int, str] = {}
    split_dir = _split_dir(folder)
    for split, name in SPLIT_FILES.items():
        lines = read_lines(split_dir / name)
        if not lines:
            problems.add(f"{split_dir / name}: no images listed (empty file)")
        for n, line in lines:
            parts = PurePosixPath(line).parts
            if len(parts) < 4 or not INTEGER.fullmatch(parts[-2]):
                problems.add(f"{split_dir / name} line {n}: expected 'train_val2018/<supercategory>/<category_id>/"
                             f"<file>.jpg', got {line!r}")
                continue
            label = int(parts[-2])
            why = label_problem(label, "category id")
            if why:
                problems.add(f"{split_dir / name} line {n}: {why}")
                continue
            # The published loaders key classes by '<supercategory>/<category_id>'; a category id under two
            # supercategories would make the integer label ambiguous.
            if supercategory.setdefault(label, parts[-3]) != parts[-3]:
                problems.add(f"{split_dir / name} line {n}: category {label} appears under both "
                             f"{supercategory[label]!r} and {parts[-3]!r}")
                continue
            rows.append((line, label, split))
    problems.raise_if_any()
    return pd.DataFrame(rows, columns=["path", "label", "split"])


BENCHMARK = Benchmark(
    name="inat2018",
    title="iNaturalist-2018 (Smooth-AP split)",
    markers=(SPLIT_FILES["train"], f"{IMAGES}/{SPLIT_FILES['train']}"),
    subdirs=("Inaturalist", "iNaturalist", "inaturalist", "inat2018", "iNat2018"),
    counts={"train": (325_846, 5_690), "test": (136_093, 2_452)},
    parse=parse,
    fetch_help=FETCH_HELP,
    refine_root=refine_root,
)
