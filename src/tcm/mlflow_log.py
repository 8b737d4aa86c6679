"""What one (run, seed) puts in MLflow, shared by the live stages and by ``tcm mlflow-import``.

The stages (train, evaluate, report) log while they work; ``tcm mlflow-import`` rebuilds the same
store afterwards from the result files under runs/ and reports/ (a fresh clone after ``dvc pull``).
Both call the functions here, so that a store looks the same whichever way it was written:

- a **parent run** per configuration (named after the run of params.yaml, tagged ``tcm.role`` =
  ``configuration``) with the mean and sd over seeds of every test metric (``test.opis.mean``,
  ``test.opis.sd``), and the report's figures;
- a **seed run** ``<run>-s<seed>`` beneath it (tag ``mlflow.parentRunId``) with the settings as
  params, per-epoch ``train.*`` metrics, ``test.*`` metrics, the data set as inputs (context
  ``training`` / ``testing``), the result files, the trained network as an MLflow model (``model``,
  PyTorch's pt2 export with an input example and signature: ``mlflow.pytorch.load_model`` and
  ``mlflow.pyfunc.load_model`` open it), the stage notebooks as HTML and the run's figures.

Figures keep one name across runs (``utility.png``, not ``utility_run_<run>.png``), at the root of
the run's artifacts: the UI's Compare ("Artifacts") offers the files common to the compared runs'
roots, and shows the one picked side by side.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from tcm.config import Config
from tcm.tracking import Tracker, flatten

# Numbers of a seed's metrics.json that describe the evaluation rather than measure the model.
NOT_METRICS = ("num_queries", "threshold_report.target_far", "threshold_report.worst_share",
               "threshold_report.resolution", "threshold_report.num_classes_far", "threshold_report.num_classes_frr")
EXAMPLE_IMAGES = 2  # images in a logged model's input example


def test_metrics(metrics: Mapping) -> dict:
    """A seed's metrics.json, flattened (``recall_at_k.1``, ``opis``, ...), less :data:`NOT_METRICS`."""
    return {k: v for k, v in flatten(metrics).items() if k not in NOT_METRICS
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def history_metrics(row: Mapping) -> dict:
    """One history.csv row (an epoch) as MLflow metrics ``train.<column>``."""
    return {f"train.{k}": v for k, v in row.items() if k not in ("epoch", "seed")}


def seed_tags(seed: int, config_hash: str, code: str | None, env: Mapping | None = None) -> dict[str, str]:
    return {"tcm.seed": str(seed), "tcm.config_hash": config_hash, "tcm.code": str(code),
            **{f"env.{k}": str(v) for k, v in (env or {}).items()}}


def parent_run(tracker: Tracker, name: str, run_hash: str, settings: Mapping) -> str | None:
    """The configuration's parent run (found by run name and settings hash; created when missing)."""
    return tracker.parent_run(name, run_hash, settings)


def seed_run(tracker: Tracker, name: str, settings: Mapping, seed: int, tags: Mapping[str, str], stage: str,
             run_hash: str | None, run_id: str | None = None) -> str | None:
    """The seed's run (``run_id`` continued when in the store), beneath its configuration's parent run."""
    parent = parent_run(tracker, name, run_hash, settings) if run_hash else None
    extra = {"mlflow.parentRunId": parent} if parent else {}
    return tracker.start_run(name, settings, stage=stage, run_id=run_id, tags={**tags, **extra}, seed=seed)


def log_dataset(tracker: Tracker, run_id: str | None, manifest: Any, data_dir: Path, dataset: str,
                split: str) -> None:
    """The rows of ``split`` of a data set's manifest (:class:`tcm.data.Manifest`) as the run's input
    (context training / testing), its source the data set's folder (relative to the project)."""
    if not tracker.enabled or run_id is None:
        return
    rows = manifest.table[manifest.table["split"] == split].reset_index(drop=True)
    base = tracker.cfg.base_dir.resolve()
    source = Path(data_dir).resolve()
    tracker.log_input(run_id, rows, name=dataset, context="training" if split == "train" else "testing",
                      source=str(source.relative_to(base) if source.is_relative_to(base) else source))


def example_input(pipeline: Any, n: int = EXAMPLE_IMAGES) -> np.ndarray:
    """The first ``n`` images of a test pipeline (:class:`tcm.data.batches.InputPipeline`) as the model
    sees them: float32 (n, 3, S, S), on the CPU."""
    import torch
    from torch.utils.data import default_collate

    items = [pipeline.dataset[i] for i in range(min(n, len(pipeline.dataset)))]
    x = (pipeline.collate_fn or default_collate)(items)[0]
    return pipeline.to_model(x, torch.device("cpu")).float().cpu().numpy()


def log_model(tracker: Tracker, cfg: Config, run_id: str | None, name: str, model: Any, state: Mapping,
              example: np.ndarray) -> None:
    """The trained network as the run's MLflow model ``model`` (pt2, with the input example ``example``
    and the signature it gives), registered as ``<experiment>-<run>`` under ``mlflow.register_model``."""
    if not (tracker.enabled and run_id and cfg.mlflow.log_model) or model is None:
        return
    import torch

    model = model.to("cpu").eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    meta = {k: state[k] for k in ("epoch", "epochs", "seed", "config_hash", "code") if k in state}
    registered = f"{cfg.mlflow.experiment}-{name}" if cfg.mlflow.register_model else None
    tracker.log_model(run_id, model, example, output, metadata={"tcm": meta}, registered_name=registered)


def log_evaluation(tracker: Tracker, cfg: Config, run_id: str | None, name: str, seed: int, metrics: Mapping,
                   model: Any, state: Mapping, manifest: Any, pipeline: Any) -> None:
    """A seed's test metrics, result files, test split (of ``manifest``) and model (its input example
    from the test ``pipeline``)."""
    run_dir = cfg.run_dir(name)
    tracker.log_metrics(run_id, {"test": test_metrics(metrics)})
    tracker.log_artifacts(run_id, [run_dir.seed_metrics(seed), run_dir.seed_settings(seed), run_dir.seed_curves(seed),
                                   run_dir.seed_embeddings(seed), run_dir.info], "results")
    dataset = cfg.runs[name].dataset
    log_dataset(tracker, run_id, manifest, cfg.data_dir(dataset), dataset, "test")
    if tracker.enabled and run_id and cfg.mlflow.log_model and model is not None:
        log_model(tracker, cfg, run_id, name, model, state, example_input(pipeline))


def summary_metrics(per_seed: Mapping[int, Mapping]) -> dict[str, float]:
    """Mean and sd (n - 1) over seeds of every test metric: ``test.<metric>.mean`` / ``.sd``."""
    rows = [test_metrics(m) for m in per_seed.values()]
    out: dict[str, float] = {}
    for key in sorted(set().union(*rows)) if rows else ():
        values = [float(r[key]) for r in rows if key in r and not math.isnan(float(r[key]))]
        if not values:
            continue
        out[f"test.{key}.mean"] = float(np.mean(values))
        if len(values) > 1:
            out[f"test.{key}.sd"] = float(np.std(values, ddof=1))
    return out


def log_summary(tracker: Tracker, cfg: Config, name: str, run_hash: str, settings: Mapping,
                per_seed: Mapping[int, Mapping]) -> None:
    """The configuration's parent run: mean and sd over seeds, and runs/<run>/metrics.json."""
    parent = parent_run(tracker, name, run_hash, settings)
    if parent is None:
        return
    tracker.log_metrics(parent, summary_metrics(per_seed))
    tracker.log_artifacts(parent, [cfg.run_dir(name).metrics], "results")
    tracker.end_run(parent)


def fixed_names(run: str, figures: Iterable[Path]) -> dict[str, Path]:
    """Each figure of a run under a name that is the same for every run: ``utility.png`` for the run's
    own ``utility_run_<run>.png``, ``<kind>_pair.png`` for a figure of the run beside its TCM partner
    (``utility_<dataset>_<model>_<loss>.png``); the file's own name when two would share one."""
    figures = list(figures)
    own = f"_run_{run}"
    names = [p.stem.replace(own, "") if own in p.stem else p.stem.split("_")[0] + "_pair" for p in figures]
    return {(n if names.count(n) == 1 else p.stem) + p.suffix: p for n, p in zip(names, figures)}


def log_report(tracker: Tracker, run_ids: Iterable[str | None], run: str, notebooks: Iterable[Path],
               figures: Iterable[Path], info: Path) -> None:
    """Notebooks (HTML), figures (at the root, under :func:`fixed_names`) and run.json to each of ``run_ids``."""
    run_ids = [r for r in run_ids if r]
    if not (tracker.enabled and run_ids):
        return
    with tempfile.TemporaryDirectory() as tmp:
        named = []
        for fixed, path in fixed_names(run, [p for p in figures if Path(p).is_file()]).items():
            shutil.copyfile(path, Path(tmp) / fixed)
            named.append(Path(tmp) / fixed)
        for run_id in run_ids:
            tracker.log_artifacts(run_id, notebooks, "notebooks")
            tracker.log_artifacts(run_id, named)  # at the root: the UI's Compare shows only the root's files
            tracker.log_artifacts(run_id, [info], "config")
            tracker.set_stage(run_id, "report")
