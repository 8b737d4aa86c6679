"""`tcm` command line: every pipeline stage without Jupyter, DVC or MLflow.

    tcm check-params [--params params.yaml] [--stamp FILE]
    tcm data prepare NAME            (NAME: a key of `datasets` in params.yaml)
    tcm train RUN
    tcm evaluate --run RUN
    tcm report

Errors the user can fix (bad params, missing data) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tcm.config import ConfigError, load_config
from tcm.data import DataError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, FileNotFoundError)


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")


def cmd_check_params(args: argparse.Namespace) -> int:
    load_config(args.params)
    if args.stamp:
        # A constant stamp: downstream stages depend on it without depending on any value.
        from tcm.io import write_text

        write_text(args.stamp, "params.yaml validated\n")
    print(f"{args.params}: ok")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from tcm.data import prepare

    cfg = load_config(args.params)
    out = prepare(cfg.dataset(args.name), cfg.data_dir(args.name))
    print(f"wrote {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tcm import train

    cfg = load_config(args.params)
    result = train.run(cfg, args.run)
    print(f"trained {args.run}: {len(result.history)} epochs -> {result.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tcm import evaluate

    cfg = load_config(args.params)
    m = evaluate.run(cfg, args.run)
    print(f"{args.run}: R@1 {m['recall_at_k']['1']:.4f}  MAP@R {m['map_at_r']:.4f}  OPIS {m['opis']:.5f}  "
          f"eps-OPIS {m['eps_opis']:.5f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tcm import report

    written = report.run(load_config(args.params))
    print("\n".join(str(p) for files in written.values() for p in files))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-params", help="validate params.yaml")
    _params_arg(p)
    p.add_argument("--stamp", help="write this file when the params are valid (for DVC)")
    p.set_defaults(func=cmd_check_params)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="write data/NAME/manifest.csv for a data set of params.yaml")
    p.add_argument("name")
    _params_arg(p)
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("train", help="train one run of params.yaml")
    p.add_argument("run")
    _params_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="embed the test split of a trained run and compute metrics")
    p.add_argument("--run", required=True)
    _params_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="tables and figures under reports/")
    _params_arg(p)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"tcm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tcm: interrupted; completed epochs are kept in the checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
