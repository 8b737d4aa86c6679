"""`tcm parallel`: the pipeline with its train stages side by side, one per GPU, or one SLURM job each (docs/gpus.md).

- :mod:`tcm.cli.parallel.engine`: DVC one call at a time, a stage's dependencies, what may be committed;
- :mod:`tcm.cli.parallel.local`: the pool of workers on this machine (``--gpus`` / ``--jobs``), which
  commits each stage that succeeded;
- :mod:`tcm.cli.parallel.slurm`: ``--slurm``, the same pool with one SLURM job per stage (submitit).

This module is the command: check params.yaml, bring the upstream stages up to date, run the
out-of-date train stages, commit each, then ``dvc repro`` for the rest (the engine's docstring says how
and why).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tcm.cli.parallel.engine import (
    DVC_INTERNALS,
    LOCK_WAIT_S,
    MISSING,
    TRAIN,
    Dvc,
    Job,
    ParallelError,
    _project_root,
    _status,
    changed,
    check_dvc_internals,
    locked,
    plan,
    snapshot,
)
from tcm.cli.parallel.local import Pool, shell_argv

__all__ = ["DVC_INTERNALS", "LOCK_WAIT_S", "MISSING", "TRAIN", "Dvc", "Job", "ParallelError", "Pool", "add_parser",
           "changed", "check_dvc_internals", "locked", "plan", "run", "shell_argv", "snapshot"]
# The `cluster:` keys that flags override (flag = key with '-': --gpus-per-job).
CLUSTER_FLAGS = ("partition", "account", "nodes", "gpus_per_job", "cpus_per_job", "mem_gb", "time_min")


def _slots(gpus: list[str] | None, jobs: int | None) -> list[str | None]:
    if gpus is not None and jobs is not None:
        raise ParallelError("parallel: give either --gpus (one worker per GPU) or --jobs N (no GPU pinning)")
    if gpus is None:
        return [None] * (jobs or 1)
    ids = [g for item in gpus for g in item.replace(",", " ").split()]
    if not ids:
        raise ParallelError("parallel: --gpus needs at least one GPU id, e.g. --gpus 0 1 2 3")
    if len(set(ids)) != len(ids):
        raise ParallelError(f"parallel: --gpus lists a GPU twice: {' '.join(ids)} (one worker per GPU)")
    return list(ids)



def run(args: Any) -> int:
    from tcm.config import check_batches, load_config
    from tcm.locks import exclusive

    slots = _slots(args.gpus, args.jobs) if not args.slurm else [None]
    if args.slurm and (args.gpus is not None or args.jobs is not None):
        raise ParallelError("parallel: --slurm submits one job per stage; --gpus and --jobs are for this machine")
    check_dvc_internals()
    root = _project_root()
    params = args.params or str(root / "params.yaml")  # DVC's params file, wherever this runs from
    cfg = load_config(params)
    check_batches(cfg, params)
    cluster = _cluster(cfg.cluster, args) if args.slurm else None
    print(f"{os.path.relpath(params)}: ok", flush=True)

    with exclusive(root / ".dvc" / "tmp" / "tcm-parallel.lock", f"project {root} (another `tcm parallel`)"):
        return _run(Dvc(root), slots, args, cluster)


def _cluster(cluster: Any, args: Any) -> Any:
    """params.yaml's ``cluster:`` with the flags given on the command line, validated as params.yaml is."""
    from pydantic import ValidationError

    flags = {key: getattr(args, key) for key in CLUSTER_FLAGS if getattr(args, key, None) is not None}
    try:
        cluster = type(cluster).model_validate({**cluster.model_dump(), **flags})
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(x) for x in first["loc"])
        where = f"--{key.replace('_', '-')}" if key in flags else f"cluster.{key}"
        raise ParallelError(f"parallel: {where}: {first['msg']}") from None
    import shutil

    if shutil.which("sbatch") is None:
        raise ParallelError("parallel: --slurm needs SLURM's sbatch on PATH (none here); run on the cluster's "
                            "login node, or without --slurm")
    return cluster


def _run(dvc: Dvc, slots: list[str | None], args: Any, cluster: Any = None) -> int:
    train, upstream = plan(dvc)
    if not train:
        raise ParallelError(f"parallel: dvc.yaml has no {TRAIN} stages ({TRAIN}@<run>)")
    if upstream:
        print(f"tcm parallel: dvc repro {' '.join(upstream)}", flush=True)
        if dvc.cli("repro", *upstream, capture=False).returncode != 0:
            print("tcm: error: the stages the train stages depend on failed (above); nothing was trained",
                  file=sys.stderr)
            return 1
    status = _status(dvc)
    todo = [name for name in train if name in status]
    if cluster is not None:
        from tcm.cli.parallel.slurm import SlurmPool

        workers = f"SLURM ({_describe(cluster)})"
        pool: Pool = SlurmPool(dvc, cluster, len(todo))
    else:
        workers = " ".join(f"GPU {s}" for s in slots) if slots[0] is not None else f"{len(slots)} CPU worker(s)"
        pool = Pool(dvc, slots, len(todo))
    print(f"tcm parallel: {len(todo)} of {len(train)} {TRAIN} stages to run on {workers}"
          f"{'; the others are up to date' if len(todo) < len(train) else ''}", flush=True)
    if todo:
        executor = ThreadPoolExecutor(max_workers=pool.workers, thread_name_prefix="tcm-parallel")
        futures = [executor.submit(pool.run, name) for name in todo]
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            cancelled = pool.stop()
            executor.shutdown(wait=True, cancel_futures=True)
            if cluster is not None:
                print(f"tcm: interrupted; scancel {' '.join(cancelled) or '(no job running)'}: the SLURM jobs this "
                      "command submitted are cancelled; their stages stay out of date and resume from their last "
                      "checkpoint on the next `tcm parallel --slurm`", file=sys.stderr)
                return 130
            print("tcm: interrupted; stages not yet committed stay out of date (completed epochs are kept in "
                  "their checkpoints)", file=sys.stderr)
            return 130
        executor.shutdown(wait=True)
    if cluster is not None and pool.failed:  # each failed job was named in one line above
        return 2
    bad = pool.failed + pool.refused
    if bad:
        print(f"tcm: error: {len(bad)} of {len(todo)} {TRAIN} stages not committed ({', '.join(bad)}); "
              f"{len(pool.committed)} committed. Fix them and run `tcm parallel` again (it runs only what is out "
              "of date); the rest of the pipeline was not run", file=sys.stderr)
        return 1
    stale = [name for name in train if name in _status(dvc)]
    if stale:
        print(f"tcm: error: {', '.join(stale)} out of date again (a dependency changed after it was committed); "
              "run `tcm parallel` again", file=sys.stderr)
        return 1
    if args.train_only:
        print(f"tcm parallel: every {TRAIN} stage is up to date; `dvc repro` runs the rest", flush=True)
        return 0
    print("tcm parallel: dvc repro (the rest of the pipeline)", flush=True)
    return 0 if dvc.cli("repro", capture=False).returncode == 0 else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("parallel", help="the pipeline with its train stages side by side, one per GPU "
                       "(--gpus 0 1 2 3) or --jobs N on CPU; then `dvc repro` for the rest (docs/gpus.md)")
    p.add_argument("--gpus", nargs="+", metavar="ID", help="GPU ids (CUDA_VISIBLE_DEVICES values): one worker each")
    p.add_argument("--jobs", type=_positive, help="number of workers, without GPU pinning (default 1)")
    p.add_argument("--train-only", action="store_true", help="stop once every train stage is up to date")
    p.add_argument("--params", help="params file to check first (default: the project's params.yaml)")
    s = p.add_argument_group("SLURM (each flag overrides its key of params.yaml's cluster: section)")
    s.add_argument("--slurm", action="store_true", help="one SLURM job per out-of-date train stage (submitit)")
    for key, kind, text in (("partition", str, "sbatch --partition"), ("account", str, "sbatch --account"),
                            ("nodes", int, "nodes per run (> 1: DDP across nodes)"),
                            ("gpus_per_job", int, "GPUs per node (> 1: DDP through torchrun)"),
                            ("cpus_per_job", int, "CPUs per node"), ("mem_gb", int, "memory per node, GB"),
                            ("time_min", int, "time limit, minutes (the job is requeued at it and resumes)")):
        s.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, help=text)
    p.set_defaults(func=run)


def _describe(cluster: Any) -> str:
    parts = [f"partition {cluster.partition}" if cluster.partition else "default partition",
             f"{cluster.nodes} node(s)" if cluster.nodes > 1 else "",
             f"{cluster.gpus_per_job} GPU(s)" if cluster.gpus_per_job else "no GPU",
             f"{cluster.cpus_per_job} CPU(s)", f"{cluster.time_min} min"]
    return ", ".join(x for x in parts if x)


def _positive(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
