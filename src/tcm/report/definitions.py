"""What the report's tables are made of: the metric groups and their change columns, the collapse
guard, the paper's claims as quoted, and :class:`Pair`."""

from __future__ import annotations

from dataclasses import dataclass

# The paper's headline figures (authors' blog post; ../shared/paper.md). Nothing else is quoted.
PAPER_CLAIMS = {
    "comparisons where TCM lowered OPIS": "16 of 16",
    "largest OPIS reduction": "77.3%",
    "comparisons where TCM raised Recall@1": "14 of 16",
    "largest Recall@1 gain (pp)": "+3.6",
    "largest Recall@1 drop (pp)": "-0.2",
}
RETRIEVAL = ("MAP@R", "R-precision")
# Recall@k reported by the paper for each benchmark (its tables follow the literature's convention).
PAPER_K = {"cub": (1, 2, 4, 8), "cars196": (1, 2, 4, 8), "sop": (1, 10, 100, 1000), "inat2018": (1, 4, 16, 32)}
CONSISTENCY = ("OPIS", "eps-OPIS")
SIGNIFICANCE = "significant at 95% (t, paired over seeds)"
PP = 100.0  # accuracy metrics are fractions; their changes are reported in percentage points
# Per-seed numbers that qualify the metrics rather than rank the models: report column -> metrics.json key.
DIAGNOSTICS = {"OPIS boot sd": "opis_boot_sd", "eps-OPIS boot sd": "eps_opis_boot_sd",
               "neg cos median": "neg_cos_median", "pos cos median": "pos_cos_median"}
# Collapse guard. A seed is "collapsed" when the median cosine of its test negative pairs is at least
# COLLAPSE_NEG_COS_MEDIAN (images of different classes look alike: every pair is bunched near 1, so its
# thresholds and OPIS describe a degenerate embedding), or, for a run with TCM, when its Recall@1 is more
# than COLLAPSE_R1_DROP_PP percentage points below the same seed of its run without TCM (its consistency
# was bought by breaking retrieval). Such a run and its comparison are shown, marked "collapsed", and
# never counted in the claims (as runs that did not learn).
COLLAPSE_NEG_COS_MEDIAN = 0.9
COLLAPSE_R1_DROP_PP = 5.0
# Verdicts are given for these metrics; "seeds for 10%" sizes a paired test for this relative change of OPIS.
VERDICT_METRICS = ("R@1", "OPIS")
DETECT_CHANGE = 0.10
LEFT_OUT = ("did not learn", "collapsed")
# Data sets the package makes itself (or bundles): a report on them only is a demonstration (see _purpose).
GENERATED_SOURCES = {"glyphs": "random-stroke glyphs of classes disjoint across pretrain, train and test",
                     "sklearn_digits": "scikit-learn's 8x8 digits", "mnist": "MNIST"}


def change_column(metric: str) -> str:
    """The name of a metric's change column (with - without): Recall@k, MAP@R and R-precision change
    in percentage points, named '(pp)'; OPIS and eps-OPIS in their own unit (their relative change has
    its own '%' column). Its interval's columns add ' low' and ' high'.

    >>> change_column("R@1"), change_column("OPIS")
    ('R@1 change (pp)', 'OPIS change')
    """
    return f"{metric} change" + ("" if metric in CONSISTENCY else " (pp)")


def change_scale(metric: str) -> float:
    """What a difference of ``metric`` is multiplied by in its change column (:func:`change_column`)."""
    return 1.0 if metric in CONSISTENCY else PP


NEEDS_SEEDS = "intervals need >= 2 seeds"


@dataclass(frozen=True)
class Pair:
    """Two runs identical except for TCM."""

    key: str
    without: str
    with_tcm: str


def metric_columns(columns) -> list[str]:
    """The metric names among ``columns``: Recall@k by k, then MAP@R, R-precision, OPIS, eps-OPIS.

    >>> metric_columns(["run", "OPIS", "R@10", "R@2", "MAP@R"])
    ['R@2', 'R@10', 'MAP@R', 'OPIS']
    """
    recall = sorted((c for c in columns if c.startswith("R@")), key=lambda c: int(c[2:]))
    return recall + [c for c in (*RETRIEVAL, *CONSISTENCY) if c in columns]


def seed_list(seeds) -> str:
    """Seeds as the tables write them: '0, 1, 2'."""
    return ", ".join(str(int(s)) for s in seeds)
