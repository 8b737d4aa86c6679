"""Report: result files of every run -> ``reports/`` tables, figures and README.

Reads only files the train and evaluate stages wrote (never MLflow); a run or seed whose files are
absent is shown as missing, never filled in. Each run is trained once per seed: a run is summarised
by its mean, sd and n over the evaluated seeds, and each without/with-TCM pair is compared seed by
seed (paired differences with a two-sided 95% Student-t interval, ``tcm.stats``), which gives each
comparison a verdict: lower, higher or no difference. A seed whose embedding collapsed (see
:data:`COLLAPSE_NEG_COS_MEDIAN`, :data:`COLLAPSE_R1_DROP_PP`) marks its run and comparison
'collapsed'. The claims table counts the verdicts of the comparisons that learned and did not
collapse, and recomputes the paper's largest changes from their means.

Modules, in the order the stage uses them:
    definitions  metric groups, change columns, the collapse guard, the paper's claims, Pair
    runs         which seeds count; the per-seed table, the run summary, learned / collapsed; the pairs
    comparisons  each pair seed by seed: paired changes, 95% intervals, verdicts, OPIS precision
    claims       the paper's claims checked against the comparisons
    tables       CSV / Markdown / LaTeX tables, one per data set, the threshold table, metrics.json
    figure_data  the data of the figures and DVC plots; each pair's figures
    readme       reports/README.md
    notebooks    the executed notebook's sections; HTML renders for MLflow
    stage        run: everything above, written, and logged to MLflow
"""

from tcm.report.claims import claims_table
from tcm.report.comparisons import comparison_table, seed_differences
from tcm.report.definitions import (
    COLLAPSE_NEG_COS_MEDIAN,
    COLLAPSE_R1_DROP_PP,
    CONSISTENCY,
    DIAGNOSTICS,
    NEEDS_SEEDS,
    PAPER_CLAIMS,
    PAPER_K,
    RETRIEVAL,
    SIGNIFICANCE,
    Pair,
    change_column,
    metric_columns,
)
from tcm.report.figure_data import class_rates, class_rates_at, curves_long, utility_over_seeds
from tcm.report.notebooks import NOTEBOOK_SECTIONS, notebook_html, notebook_sections, show
from tcm.report.readme import _purpose, generated_by_package
from tcm.report.runs import (
    chance_bound,
    collapse_reasons,
    evaluated_seeds,
    find_pairs,
    per_seed_table,
    run_summary,
    stale_seeds,
)
from tcm.report.stage import log_to_mlflow, run
from tcm.report.tables import _column_format, dataset_table, threshold_table, top_metrics, write_table

__all__ = [
    "COLLAPSE_NEG_COS_MEDIAN", "COLLAPSE_R1_DROP_PP", "CONSISTENCY", "DIAGNOSTICS", "NEEDS_SEEDS", "NOTEBOOK_SECTIONS",
    "PAPER_CLAIMS", "PAPER_K", "RETRIEVAL", "SIGNIFICANCE", "Pair", "_column_format", "_purpose", "chance_bound",
    "change_column", "claims_table", "class_rates", "class_rates_at", "collapse_reasons", "comparison_table",
    "curves_long", "dataset_table", "evaluated_seeds", "find_pairs", "generated_by_package", "log_to_mlflow",
    "metric_columns", "notebook_html", "notebook_sections", "per_seed_table", "run", "run_summary", "seed_differences",
    "show", "stale_seeds", "threshold_table", "top_metrics", "utility_over_seeds", "write_table",
]
