"""The one data format every data set is turned into: ``manifest.csv`` (path, label, split) plus
``dataset.json`` naming the folder that the paths are relative to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from tcm.atomic import atomic_path, write_json
from tcm.errors import TcmError

MANIFEST = "manifest.csv"
INFO = "dataset.json"
COLUMNS = ("path", "label", "split")
SPLITS = ("train", "test")
# A third split of classes disjoint from both, for the upstream pretraining stage (generated data sets).
PRETRAIN = "pretrain"
ALL_SPLITS = (PRETRAIN, *SPLITS)
# How many offending rows a message spells out; the count always covers all of them.
SHOWN_ROWS = 3


class DataError(TcmError, ValueError):
    """A data set on disk is missing, malformed or not what was expected; the message says where."""


@dataclass(frozen=True)
class Manifest:
    table: pd.DataFrame  # columns path (relative to image_root), label (int), split
    image_root: Path

    def split(self, split: str) -> pd.DataFrame:
        if split not in ALL_SPLITS:
            raise ValueError(f"split must be one of {ALL_SPLITS}, but got {split!r}")
        return self.table[self.table["split"] == split].reset_index(drop=True)


def safe_relpath(rel: str) -> bool:
    """Paths must stay inside the data set folder: relative, no '..' parts."""
    if not isinstance(rel, str):  # an empty CSV cell reads as NaN
        return False
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def check_table(table: pd.DataFrame, where: str, closed_set: bool = False, dataset: str | None = None) -> None:
    """Known columns and splits, paths inside the image root, integer labels, a non-empty train and test
    split, and (open world, unless ``closed_set``) no class in both splits. ``dataset``: its name, for the
    messages."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing columns {missing}; expected {list(COLUMNS)}")
    # Checked wherever a manifest is read, not only by `data prepare`: a hand-edited or foreign manifest
    # must not make training read (or preprocessing write) outside the data set folder.
    bad = [(i, p) for i, p in enumerate(table["path"]) if not safe_relpath(p)]
    if bad:
        shown = "; ".join(f"row {i + 1} (line {i + 2}): {p!r}" for i, p in bad[:SHOWN_ROWS])
        more = f"; ... and {len(bad) - SHOWN_ROWS} more" if len(bad) > SHOWN_ROWS else ""
        escape = "paths escape" if len(bad) != 1 else "path escapes"
        raise DataError(f"{where}: {len(bad)} {escape} the data set folder (absolute, '..' or empty): {shown}{more}; "
                        "paths must be relative to the image root")
    bad_split = sorted(set(table["split"]) - set(ALL_SPLITS))
    if bad_split:
        raise DataError(f"{where}: unknown split values {bad_split}; expected {list(ALL_SPLITS)}")
    if not pd.api.types.is_integer_dtype(table["label"]):
        raise DataError(f"{where}: column 'label' must hold integers, but has dtype {table['label'].dtype}")
    # Said here, by split: an empty split would otherwise surface at training as too large a batch_size,
    # or at evaluation as too large a recall_k.
    empty = [s for s in SPLITS if not (table["split"] == s).any()]
    if empty:
        of = f" of data set {dataset!r}" if dataset else ""
        splits = f"{empty[0]} split{of} is" if len(empty) == 1 else f"{' and '.join(empty)} splits{of} are"
        raise DataError(f"{where}: the {splits} empty (no images)")
    overlap = set(table.loc[table.split == "train", "label"]) & set(table.loc[table.split == "test", "label"])
    if overlap and not closed_set:
        raise DataError(f"{where}: {len(overlap)} labels are in both train and test (e.g. {sorted(overlap)[:5]}); "
                        "open-world splits need disjoint classes")
    shared = set(table.loc[table.split == PRETRAIN, "label"]) & set(table.loc[table.split != PRETRAIN, "label"])
    if shared:
        raise DataError(f"{where}: {len(shared)} pretrain labels are also in train or test "
                        f"(e.g. {sorted(shared)[:5]}); "
                        "the pretrain classes must be disjoint from both")


def write_manifest(out_dir: Path | str, table: pd.DataFrame, image_root: Path | str, source: str,
                   closed_set: bool = False) -> Path:
    """Write manifest.csv and dataset.json atomically; ``image_root`` may be relative to ``out_dir``.
    ``closed_set``: the test split holds other images of the train classes (the toy), recorded in dataset.json."""
    out_dir = Path(out_dir)
    table = table.loc[:, list(COLUMNS)].reset_index(drop=True)
    check_table(table, str(out_dir / MANIFEST), closed_set)
    with atomic_path(out_dir / MANIFEST) as tmp:
        table.to_csv(tmp, index=False)
    present = [s for s in ALL_SPLITS if s in SPLITS or (table.split == s).any()]
    counts = {s: {"images": int((table.split == s).sum()), "classes": int(table.label[table.split == s].nunique())}
              for s in present}
    info = {"source": source, "image_root": str(image_root), "counts": counts}
    write_json(out_dir / INFO, {**info, "closed_set": True} if closed_set else info)
    return out_dir / MANIFEST


def read_manifest(data_dir: Path | str) -> Manifest:
    """Read a prepared data set; a missing, empty or damaged manifest is a DataError saying how to rebuild it."""
    import json

    data_dir = Path(data_dir)
    path, info_path = data_dir / MANIFEST, data_dir / INFO
    for p in (path, info_path):
        if not p.is_file():
            raise DataError(f"{p}: not found; run the data stage (`tcm data prepare ...`) first")
    # The folder is data/<name> for the data sets of params.yaml, so its name is the one to prepare again.
    rebuild = f"re-run `tcm data prepare {data_dir.name}` (or `dvc repro`)"
    try:
        table = pd.read_csv(path, dtype={"path": str, "split": str})
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no header, no rows); {rebuild}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV file ({' '.join(str(e).split())}); {rebuild}") from None
    if table.empty:
        # Checked before the columns: a header-only file would otherwise be reported as a dtype problem.
        raise DataError(f"{path}: no rows (header only); {rebuild}")
    try:
        info = json.loads(info_path.read_text())
        check_table(table, str(path), bool(info.get("closed_set", False)), dataset=data_dir.name)
        image_root = Path(info["image_root"])
    except DataError as e:
        raise DataError(f"{e}; {rebuild}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise DataError(f"{info_path}: not a valid data set description ({type(e).__name__}: {e}); "
                        f"{rebuild}") from None
    if not image_root.is_absolute():
        image_root = data_dir / image_root
    return Manifest(table=table, image_root=image_root)
