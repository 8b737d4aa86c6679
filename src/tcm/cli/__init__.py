"""`tcm` command line: every pipeline stage without Jupyter, DVC or MLflow.

    tcm check-params [--params params.yaml] [--stamp FILE]   (--params may be a profile)
    tcm data prepare NAME            (NAME: a key of `datasets` in params.yaml)
    tcm data prepare DATASET --root DIR --out DIR [--allow-nonstandard-counts] [--verify full] [--download]
                                     (DATASET: cub | cars196 | sop | inat2018 | mnist | sklearn_digits)
    tcm data preprocess (NAME | --in DIR) [--out DIR] [--short-side 256]
    tcm train RUN
    tcm evaluate --run RUN
    tcm evaluate EMBEDDINGS LABELS --out metrics.json [--k 1 2 4 8] [--curves curves.csv] [...]
    tcm report
    tcm mlflow-import                (the MLflow store rebuilt from runs/ and reports/: a fresh clone, after dvc pull)
    tcm profile [NAME]               (write profiles/NAME.yaml as params.yaml; no NAME: list them)
    tcm notebook IN OUT [-p NAME VALUE ...]   (run a stage notebook as dvc.yaml does)
    tcm parallel (--gpus ID [ID ...] | --jobs N | --slurm [--partition P --gpus-per-job G ...]) [--train-only]
                                     (the pipeline with its train stages side by side, or one SLURM
                                     job each: docs/gpus.md)

Errors the user can fix (bad params, missing data) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tcm.config import ConfigError, check_batches, load_config
from tcm.errors import TcmError, missing_package_message

USER_ERRORS: tuple[type[Exception], ...] = (TcmError, FileNotFoundError)
# Per command, the arguments naming a file it writes. A folder there is refused before any work: the
# write comes last and would fail as a traceback after the work was done. (`tcm evaluate` checks its
# own --out and --curves: tcm.cli.evaluate_files.check_outputs.)
OUTPUT_FILES: dict[str, dict[str, str]] = {"check-params": {"stamp": "--stamp"}, "profile": {"out": "--out"},
                                           "notebook": {"output": "OUTPUT"}}


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_mlflow_import(args: argparse.Namespace) -> int:
    from tcm.cli.mlflow_import import import_results
    from tcm.tracking import store_paths

    cfg = load_config(args.params)
    counts = import_results(cfg)
    print(f"{store_paths(cfg)[0]}: {counts['created']} seed run(s) imported, {counts['present']} already there")
    return 0


def cmd_check_params(args: argparse.Namespace) -> int:
    from tcm.profiles import load_params

    # A profile (profiles/NAME.yaml, possibly a matrix over configs/recipes.yaml) is checked as it would render.
    cfg = load_params(args.params)
    check_batches(cfg, args.params)
    from tcm.atomic import write_json, write_text

    if args.stamp:
        # A constant stamp: downstream stages depend on it without depending on any value.
        write_text(args.stamp, "params.yaml validated\n")
    if args.data_settings:
        # One file per data set with what its data stage reads (config.data_settings): the data stage
        # depends on it instead of all of datasets.<name>, so augmentation edits do not re-prepare data.
        from tcm.config import data_settings

        folder = Path(args.data_settings)
        for name, dataset in cfg.datasets.items():
            write_json(folder / f"{name}.json", data_settings(dataset))
        for old in set(folder.glob("*.json")) - {folder / f"{name}.json" for name in cfg.datasets}:
            old.unlink()  # a data set no longer in params.yaml
    print(f"{args.params}: ok")
    return 0


def _prepare_target(args: argparse.Namespace):
    """(DatasetConfig, output folder) for `data prepare`: a params.yaml data set, or a source given on the
    command line (`--root`/`--out`, or NAME is a source name that params.yaml does not define)."""
    from pydantic import ValidationError

    from tcm.config import DATASET_SOURCES, DatasetConfig

    overrides = {k: v for k, v in (("allow_nonstandard_counts", args.allow_nonstandard_counts or None),
                                   ("verify", args.verify), ("download", args.download or None),
                                   ("workers", args.workers)) if v is not None}
    if args.root is None and args.out is None:
        try:
            cfg = load_config(args.params)
        except ConfigError:
            # No params file at all is fine for a source name; a broken one is reported as such.
            if args.name not in DATASET_SOURCES or Path(args.params).exists():
                raise
        else:
            if args.name in cfg.datasets or args.name not in DATASET_SOURCES:
                return cfg.dataset(args.name).model_copy(update=overrides), cfg.data_dir(args.name)
    if args.name not in DATASET_SOURCES:
        raise ConfigError(f"data prepare: with --root/--out, DATASET must be one of {list(DATASET_SOURCES)}, "
                          f"but got {args.name!r}")
    fields = {"source": args.name, "root": args.root, **overrides}
    if args.name in ("sklearn_digits", "mnist"):
        fields["train_classes"] = [0, 1, 2, 3, 4]  # the open-world default: digits 0-4 train, 5-9 test
    try:
        ds = DatasetConfig.model_validate(fields)
    except ValidationError as e:
        raise ConfigError("; ".join(f"data prepare: {err['msg'].removeprefix('Value error, ')}"
                                    for err in e.errors())) from None
    return ds, Path(args.out) if args.out else Path("data") / args.name


def _summary(manifest: Path) -> str:
    import json

    info = json.loads((manifest.parent / "dataset.json").read_text())
    c = info["counts"]
    return (f"train {c['train']['images']:,} images / {c['train']['classes']:,} classes, test {c['test']['images']:,} "
            f"images / {c['test']['classes']:,} classes; source: {info['source']}")


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from tcm.data import prepare

    ds, out_dir = _prepare_target(args)
    out = prepare(ds, out_dir)
    print(f"wrote {out} ({_summary(out)})")
    return 0


def cmd_data_preprocess(args: argparse.Namespace) -> int:
    from tcm.data.preprocess import preprocess_manifest

    if (args.name is None) == (args.in_dir is None):
        raise ConfigError("data preprocess: give either NAME (a data set of params.yaml) or --in DIR")
    if args.in_dir is not None:
        src = Path(args.in_dir)
        out_dir = Path(args.out) if args.out else src.with_name(f"{src.name}-s{args.short_side}")
    else:
        cfg = load_config(args.params)
        cfg.dataset(args.name)  # an unknown name is a ConfigError listing the data sets
        src = cfg.data_dir(args.name)
        out_dir = Path(args.out) if args.out else cfg.data_dir(f"{args.name}-s{args.short_side}")
    out = preprocess_manifest(src, out_dir, short_side=args.short_side, quality=args.quality, workers=args.workers)
    print(f"wrote {out} ({_summary(out)})")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from tcm import pretrain

    cfg = load_config(args.params)
    out = pretrain.run(cfg, args.dataset)
    print(f"pretrain {args.dataset} -> {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tcm import train

    cfg = load_config(args.params)
    result = train.run(cfg, args.run)
    seeds = sorted(int(s) for s in result.history["seed"].unique()) if len(result.history) else []
    print(f"trained {args.run}: seeds {seeds}, {result.history['epoch'].max()} epochs each -> {result.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    # Two exclusive forms: a run of params.yaml (the pipeline stage) or any saved embeddings.
    if args.run and args.embeddings:
        raise ConfigError("evaluate: give either --run RUN or EMBEDDINGS LABELS, not both")
    if not args.run:
        if not args.embeddings:
            raise ConfigError("evaluate: give --run RUN, or EMBEDDINGS LABELS --out metrics.json")
        from tcm.cli import evaluate_files

        return evaluate_files.run(args)
    from tcm import evaluate

    cfg = load_config(args.params)
    per_seed = evaluate.run(cfg, args.run)
    for seed, m in per_seed.items():
        print(f"{args.run} seed {seed}: R@1 {m['recall_at_k']['1']:.4f}  MAP@R {m['map_at_r']:.4f}  "
              f"OPIS {m['opis']:.5f}  eps-OPIS {m['eps_opis']:.5f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tcm import report

    written = report.run(load_config(args.params))
    print("\n".join(str(p) for files in written.values() for p in files))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from tcm import profiles

    if args.name is None:
        print("\n".join(profiles.available(Path(args.profiles))))
        return 0
    out = profiles.activate(args.name, args.profiles, args.out)
    print(f"{out}: profile {args.name!r} is active; run `dvc repro`")
    return 0


def cmd_notebook(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from tcm.cli.run_notebook import run_notebook

    output = Path(args.output)
    if int(os.environ.get("RANK") or 0) > 0:  # under torchrun (`tcm parallel --slurm`, several GPUs):
        # every rank runs the notebook (its kernel joins the process group); rank 0 alone writes the stage's copy
        output = Path(tempfile.mkdtemp(prefix=f"tcm-rank{os.environ['RANK']}-")) / output.name
    return run_notebook(Path(args.source), output, dict(args.parameters or []))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-params", help="validate params.yaml")
    _params_arg(p)
    p.add_argument("--stamp", help="write this file when the params are valid (for DVC)")
    p.add_argument("--data-settings", metavar="DIR",
                   help="write DIR/<dataset>.json: the settings each data stage reads (for DVC)")
    p.set_defaults(func=cmd_check_params)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="write data/NAME/manifest.csv for a data set of params.yaml, or "
                        "verify a benchmark (cub, cars196, sop, inat2018) under --root and write --out/manifest.csv")
    p.add_argument("name", help="a key of datasets in params.yaml, or a source: cub, cars196, sop, inat2018, mnist")
    p.add_argument("--root", help="folder holding the official files as extracted, or its parent")
    p.add_argument("--out", help="output folder for manifest.csv and dataset.json (default: data/NAME)")
    p.add_argument("--allow-nonstandard-counts", action="store_true",
                   help="accept split sizes other than the standard ones (subsets, tiny copies)")
    p.add_argument("--verify", choices=("exists", "full"), default=None,
                   help="exists: every listed file is there, a regular, non-empty image file and not cut short "
                   "(default); full: also decode every image")
    p.add_argument("--download", action="store_true",
                   help="download into --root where a stable public address exists (CUB-200-2011)")
    p.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    _params_arg(p)
    p.set_defaults(func=cmd_data_prepare)

    p = data.add_parser("preprocess", help="re-encode a prepared data set's images to a short side (JPEG)")
    p.add_argument("name", nargs="?", help="a key of datasets in params.yaml (input data/NAME, output "
                   "data/NAME-s<short side>)")
    p.add_argument("--in", dest="in_dir", help="a prepared data folder (manifest.csv + dataset.json) instead of NAME")
    p.add_argument("--out", help="output folder (default: the input folder's name + -s<short side>)")
    p.add_argument("--short-side", type=_positive_int, default=256, help="target short side in pixels (default 256)")
    p.add_argument("--quality", type=_positive_int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    _params_arg(p)
    p.set_defaults(func=cmd_data_preprocess)

    p = sub.add_parser("pretrain", help="pretrain a data set's backbone on its pretrain classes "
                       "(writes pretrained/DATASET/; a data set without `pretrain:` gets a note only)")
    p.add_argument("dataset")
    _params_arg(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="train one run of params.yaml")
    p.add_argument("run")
    _params_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a trained run (--run) or of saved embeddings (EMBEDDINGS LABELS)")
    p.add_argument("--run", help="embed the test split of this run of params.yaml and write runs/RUN/metrics.json")
    from tcm.cli.evaluate_files import add_arguments

    add_arguments(p)
    _params_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="tables and figures under reports/")
    _params_arg(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("mlflow-import", help="rebuild the MLflow store (mlflow.db, mlartifacts/) from runs/ and "
                       "reports/, e.g. on a fresh clone after `dvc pull`; runs already in the store are kept")
    _params_arg(p)
    p.set_defaults(func=cmd_mlflow_import)

    p = sub.add_parser("profile", help="make a profile of profiles/ the active params.yaml (no NAME: list them)")
    p.add_argument("name", nargs="?")
    p.add_argument("--profiles", default="profiles", help="folder of profiles (default: profiles)")
    p.add_argument("--out", default="params.yaml", help="params file to write (default: params.yaml)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("notebook", help="run a stage notebook with papermill: stderr streams to the terminal, "
                       "a user error ends it with one line and exit 2")
    p.add_argument("source", help="the notebook to run (notebooks/...)")
    p.add_argument("output", help="where the executed copy goes (reports/notebooks/...)")
    p.add_argument("-p", dest="parameters", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter (passed as a string)")
    p.set_defaults(func=cmd_notebook)

    from tcm.cli.parallel import add_parser as add_parallel

    add_parallel(sub)
    return parser


def _refuse_folder_outputs(args: argparse.Namespace) -> None:
    from tcm.cli.evaluate_files import InputError

    for dest, flag in OUTPUT_FILES.get(args.command, {}).items():
        value = getattr(args, dest, None)
        if value is not None and Path(value).is_dir():
            raise InputError(f"{args.command}: {flag} {value}: is a folder; name a file to write")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _refuse_folder_outputs(args)
        return args.func(args)
    except USER_ERRORS as e:
        print(f"tcm: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # An optional package (an extra of pyproject.toml) that this command imports lazily: one line
        # naming it and the extra to install. Any other missing module is a broken install: traceback.
        message = missing_package_message(e)
        if message is None:
            raise
        print(f"tcm: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tcm: interrupted; completed epochs are kept in the checkpoint", file=sys.stderr)
        return 130

