"""``tcm evaluate EMBEDDINGS LABELS --out metrics.json``: the full metric set on saved embeddings.

EMBEDDINGS is a ``.npy`` real array (N x d), LABELS a ``.npy`` integer array (N). Similarity is
cosine. Writes JSON with ``recall_at_k`` (k as a string -> value), ``map_at_r``, ``r_precision``,
``opis``, ``eps_opis`` (and their bootstrap sd ``opis_boot_sd``, ``eps_opis_boot_sd``),
``neg_cos_median``, ``pos_cos_median``, ``threshold_report`` and ``settings``; ``--curves FILE`` adds the per-class
TPR / TNR / utility curves as CSV (long format, the pooled curve as class "overall").

Defaults are those of the ``evaluation`` section of params.yaml (``tcm.config.EvaluationConfig``), and
the options are checked against it and reach ``tcm.metrics.evaluate_embeddings`` as that object.
Bad input prints one line naming the problem and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from tcm.config import EvaluationConfig, OpisConfig
from tcm.errors import TcmError

_DEFAULT = EvaluationConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the standalone form (the positionals are optional so ``--run`` can stand alone)."""
    p.add_argument("embeddings", nargs="?", metavar="EMBEDDINGS", help=".npy float array, N x d")
    p.add_argument("labels", nargs="?", metavar="LABELS", help=".npy integer array, N")
    p.add_argument("--out", metavar="JSON", help="metrics file to write (required with EMBEDDINGS LABELS)")
    p.add_argument("--curves", metavar="CSV", help="also write the per-class utility curves here")
    p.add_argument("--k", nargs="+", type=int, default=list(_DEFAULT.recall_k), metavar="K",
                   help=f"Recall@k cut-offs (default: {' '.join(map(str, _DEFAULT.recall_k))})")
    o = _DEFAULT.opis
    p.add_argument("--beta", type=float, default=o.beta, help=f"utility = F-beta of TPR, TNR (default {o.beta})")
    p.add_argument("--far-range", nargs=2, type=float, default=list(o.far_range), metavar=("LOW", "HIGH"),
                   help=f"calibration range of overall FAR (default {o.far_range[0]} {o.far_range[1]})")
    p.add_argument("--n-thresholds", type=int, default=o.n_thresholds, help=f"default {o.n_thresholds}")
    p.add_argument("--eps", type=float, default=o.eps, help=f"eps-OPIS share of best/worst classes (default {o.eps})")
    p.add_argument("--class-weighting", choices=["uniform", "positive_pairs"], default=o.class_weighting,
                   help="OPIS class weights (default uniform = 1/C)")
    p.add_argument("--resolution", type=float, default=o.resolution,
                   help=f"max histogram bin width of the similarity thresholds (default {o.resolution})")
    p.add_argument("--target-far", type=float, default=_DEFAULT.target_far,
                   help=f"threshold report: overall FAR of the global threshold (default {_DEFAULT.target_far})")
    p.add_argument("--worst-share", type=float, default=_DEFAULT.worst_share,
                   help=f"threshold report: share of worst classes averaged (default {_DEFAULT.worst_share})")
    b = _DEFAULT.bootstrap
    p.add_argument("--bootstrap", type=int, default=b.resamples, metavar="RESAMPLES",
                   help=f"class-stratified bootstrap of OPIS over the queries; 0 = off (default {b.resamples})")
    p.add_argument("--bootstrap-seed", type=int, default=b.seed, help=f"default {b.seed}")
    p.add_argument("--chunk-size", type=int, default=None, help="query rows per chunk (default: from free memory)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=_DEFAULT.device,
                   help=f"default {_DEFAULT.device}")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")


class InputError(TcmError, ValueError):
    """A problem with the user's files or options; the message names it."""


def load_array(path: str, what: str) -> np.ndarray:
    """A .npy file as an array; any failure -> InputError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {path}: not found")
    try:
        with open(p, "rb") as f:
            try:
                np.lib.format.read_magic(f)  # np.load alone would blame "pickled data" for any non-.npy file
            except ValueError:
                raise InputError(f"{what} file {path}: not a .npy file") from None
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, InputError):
            raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{what} file {path}: cannot read as .npy ({reason})") from None


def _same_file(a: str, b: str) -> bool:
    """Whether two spellings name one file: relative or absolute, ``./``, symbolic or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then they are not the same existing file
        return False


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would clobber each other or an input, or that are folders."""
    outputs = [("--out", args.out), ("--curves", args.curves)]
    for flag, path in outputs:
        if path is not None and Path(path).is_dir():
            raise InputError(f"{flag} {path}: is a folder; name a file to write")
        for what, source in (("EMBEDDINGS", args.embeddings), ("LABELS", args.labels)):
            if path is not None and source is not None and _same_file(path, source):
                raise InputError(f"{flag} {path}: is the {what} file; name another file to write")
    if args.out is not None and args.curves is not None and _same_file(args.out, args.curves):
        raise InputError(f"--out {args.out} and --curves {args.curves} name the same file; give the curves "
                         "another name (e.g. curves.csv)")


def settings_from_args(args: argparse.Namespace) -> EvaluationConfig:
    """The metric settings in ``args``, validated as params.yaml's ``evaluation`` section: the object the
    evaluate stage gives ``evaluate_embeddings`` too."""
    try:
        return EvaluationConfig(
            recall_k=args.k, chunk_size=args.chunk_size, device=args.device, target_far=args.target_far,
            worst_share=args.worst_share, bootstrap={"resamples": args.bootstrap, "seed": args.bootstrap_seed},
            opis=OpisConfig(beta=args.beta, far_range=tuple(args.far_range), n_thresholds=args.n_thresholds,
                            eps=args.eps, class_weighting=args.class_weighting, resolution=args.resolution))
    except ValidationError as e:
        err = e.errors()[0]
        flags = {"recall_k": "k", "opis": str(err["loc"][-1]) if err["loc"] else "option",
                 "bootstrap": "bootstrap" if err["loc"][-1:] == ("resamples",) else "bootstrap-seed"}
        where = "--" + flags.get(str(err["loc"][0]), str(err["loc"][0])).replace("_", "-") if err["loc"] else "option"
        raise InputError(f"{where}: {err['msg']} (got {err['input']!r})") from None


def run(args: argparse.Namespace) -> int:
    """Evaluate the files named in ``args``; 0 on success, 2 on bad input (one line on stderr)."""
    from tcm.atomic import atomic_path, write_json
    from tcm.metrics import evaluate_embeddings
    from tcm.metrics.opis import curves_table

    try:
        if not args.labels:
            raise InputError("give both EMBEDDINGS and LABELS (.npy files)")
        if not args.out:
            raise InputError("--out JSON is required with EMBEDDINGS LABELS")
        check_outputs(args)
        settings = settings_from_args(args)
        emb = load_array(args.embeddings, "EMBEDDINGS")
        lab = load_array(args.labels, "LABELS")
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        ev = evaluate_embeddings(emb, lab, settings, progress=progress)
    except (InputError, ValueError) as e:  # check_inputs and the metrics raise ValueError naming the problem
        message = str(e)
        if message.startswith("recall_k:"):  # the library's name of --k
            message = "--k:" + message.removeprefix("recall_k:")
        print(f"tcm evaluate: error: {message}", file=sys.stderr)
        return 2
    ev.metrics["settings"]["embeddings"], ev.metrics["settings"]["labels"] = str(args.embeddings), str(args.labels)
    try:
        write_json(args.out, ev.metrics)
        if args.curves:
            with atomic_path(args.curves) as tmp:
                curves_table(ev.curves).to_csv(tmp, index=False)
    except OSError as e:
        print(f"tcm evaluate: error: cannot write {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    m = ev.metrics
    recall = "  ".join(f"R@{k} {v:.4f}" for k, v in m["recall_at_k"].items())
    print(f"{recall}  MAP@R {m['map_at_r']:.4f}  R-prec {m['r_precision']:.4f}  OPIS {m['opis']:.5f}  "
          f"eps-OPIS {m['eps_opis']:.5f} -> {args.out}")
    return 0
