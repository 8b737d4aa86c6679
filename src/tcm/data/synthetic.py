"""Tiny copies of the four benchmarks in their real on-disk formats, for tests, smoke runs and benchmarks.

Each ``make_tiny_*`` writes real JPEG files (a class-dependent colour pattern plus noise, so a model
can learn something; some portrait, one grayscale, as in the real sets) and the official index
files: CUB's text files, Cars196's ``cars_annos.mat`` (scipy.io.savemat, same struct layout as the
original), SOP's ``Ebay_*.txt`` and the Smooth-AP iNaturalist split files. Each returns the data
set folder; its parent works as ``--root`` too. Classes split as in the real sets: the lower half
of the class ids train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

Size = tuple[int, int]


def _image(rng: np.random.Generator, label: int, index: int, size: Size, gray: bool = False) -> Image.Image:
    w, h = size
    if index % 3 == 2:  # some portrait images, as in the real data sets
        w, h = h, w
    # A per-class colour and stripe frequency, plus noise: classes are separable but not trivially equal.
    base = np.random.default_rng(label).uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = 40 * np.sin(xx * (0.02 + 0.01 * (label % 7)) + yy * 0.01 * (label % 3))[..., None]
    pixels = base + stripes + rng.normal(0, 20, size=(h, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    return img.convert("L") if gray else img


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)


def _images(n_classes: int, per_class: int, seed: int, size: Size):
    """Yields (class index 0.., image index within class, running index, PIL image)."""
    if n_classes < 2 or n_classes % 2:
        raise ValueError(f"n_classes must be even and >= 2 (half train, half test), but got {n_classes}")
    rng = np.random.default_rng(seed)
    k = 0
    for c in range(n_classes):
        for j in range(per_class):
            yield c, j, k, _image(rng, c, j, size, gray=(k == 1))
            k += 1


def make_tiny_cub(root: Path | str, n_classes: int = 4, per_class: int = 3, size: Size = (160, 120),
                  seed: int = 0) -> Path:
    """``root/CUB_200_2011`` with images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, images/."""
    folder = Path(root) / "CUB_200_2011"
    images, labels, split = [], [], []
    for c, j, k, img in _images(n_classes, per_class, seed, size):
        cls = f"{c + 1:03d}.Bird_{c + 1:03d}"
        rel = f"{cls}/Bird_{c + 1:03d}_{j + 1:04d}_{100000 + k}.jpg"
        _save(img, folder / "images" / rel)
        images.append(f"{k + 1} {rel}")
        labels.append(f"{k + 1} {c + 1}")
        split.append(f"{k + 1} {int(j % 2 == 0)}")  # the classification split; unused by the open-world one
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "classes.txt").write_text("".join(f"{c + 1} {c + 1:03d}.Bird_{c + 1:03d}\n" for c in range(n_classes)))
    return folder


def make_tiny_cars196(root: Path | str, n_classes: int = 4, per_class: int = 3, size: Size = (160, 120),
                      seed: int = 0) -> Path:
    """``root`` with cars_annos.mat (struct array 'annotations', cell array 'class_names') and car_ims/."""
    from scipy.io import savemat

    folder = Path(root)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    for c, j, k, img in _images(n_classes, per_class, seed, size):
        rel = f"car_ims/{k + 1:06d}.jpg"
        _save(img, folder / rel)
        w, h = img.size
        # The original stores each field as a 1x1 MATLAB array: uint8 class/test, uint16 boxes, char path.
        rows.append((np.array([rel]), np.array([[3]], np.uint16), np.array([[4]], np.uint16),
                     np.array([[w - 3]], np.uint16), np.array([[h - 4]], np.uint16),
                     np.array([[c + 1]], np.uint8), np.array([[j % 2]], np.uint8)))
    annotations = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        annotations[0, i] = row
    class_names = np.empty((1, n_classes), dtype=object)
    for c in range(n_classes):
        class_names[0, c] = np.array([f"Make Model {c + 1} 2012"])
    savemat(folder / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return folder


SOP_SUPER = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa", "stapler",
             "table", "toaster")


def make_tiny_sop(root: Path | str, n_classes: int = 4, per_class: int = 3, size: Size = (160, 120),
                  seed: int = 0) -> Path:
    """``root/Stanford_Online_Products`` with Ebay_train.txt, Ebay_test.txt, Ebay_info.txt and <super>_final/."""
    folder = Path(root) / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    lines: dict[str, list[str]] = {"train": [header], "test": [header]}
    info = ["image_id class_id super_class_id path"]
    for c, j, k, img in _images(n_classes, per_class, seed, size):
        sup = c % len(SOP_SUPER)
        rel = f"{SOP_SUPER[sup]}_final/{111085122000 + c}_{j}.JPG"
        _save(img, folder / rel)
        split = "train" if c < n_classes // 2 else "test"
        line = f"{k + 1} {c + 1} {sup + 1} {rel}"
        lines[split].append(line)
        info.append(line)
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        (folder / name).write_text("\n".join(lines[split]) + "\n")
    (folder / "Ebay_info.txt").write_text("\n".join(info) + "\n")
    return folder


INAT_SUPER = ("Plantae", "Aves", "Insecta", "Fungi")


def make_tiny_inat2018(root: Path | str, n_classes: int = 4, per_class: int = 3, size: Size = (160, 120),
                       seed: int = 0) -> Path:
    """``root`` with train_val2018/<supercategory>/<category_id>/<hash>.jpg and Inat_dataset_splits/."""
    folder = Path(root)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    rng = np.random.default_rng(seed + 1)
    for c, _j, _k, img in _images(n_classes, per_class, seed, size):
        category = 100 + 7 * c  # real category ids are neither contiguous nor start at 1
        rel = f"train_val2018/{INAT_SUPER[c % len(INAT_SUPER)]}/{category}/{rng.bytes(16).hex()}.jpg"
        _save(img, folder / rel)
        lines["train" if c < n_classes // 2 else "test"].append(rel)
    splits = folder / "Inat_dataset_splits"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "Inaturalist_train_set1.txt").write_text("\n".join(lines["train"]) + "\n")
    (splits / "Inaturalist_test_set1.txt").write_text("\n".join(lines["test"]) + "\n")
    return folder


MAKERS: dict[str, Callable[..., Path]] = {
    "cub": make_tiny_cub,
    "cars196": make_tiny_cars196,
    "sop": make_tiny_sop,
    "inat2018": make_tiny_inat2018,
}


def make_tiny(name: str, root: Path | str, **kwargs) -> Path:
    """``make_tiny_<name>``: a tiny copy of benchmark ``name`` (cub, cars196, sop, inat2018) under ``root``."""
    if name not in MAKERS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(MAKERS)}")
    return MAKERS[name](root, **kwargs)
