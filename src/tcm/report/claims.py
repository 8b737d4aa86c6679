"""The paper's headline claims checked against our comparisons: counts of verdicts, the largest
changes, and which comparisons were left out."""

from __future__ import annotations

import math

import pandas as pd

from tcm.report.definitions import (
    COLLAPSE_NEG_COS_MEDIAN,
    COLLAPSE_R1_DROP_PP,
    LEFT_OUT,
    NEEDS_SEEDS,
    PAPER_CLAIMS,
    SIGNIFICANCE,
    change_column,
)


def _verdicts(done: pd.DataFrame, metric: str) -> pd.Series:
    """Each comparison's verdict on ``metric`` (its column, or from its interval where the table has none)."""
    if f"{metric} verdict" in done:
        return done[f"{metric} verdict"]
    low, high = done[f"{change_column(metric)} low"], done[f"{change_column(metric)} high"]
    return pd.Series([None if math.isnan(lo) else "lower" if hi < 0 else "higher" if lo > 0 else "no difference"
                      for lo, hi in zip(low, high)], index=done.index, dtype=object)


def _verdict_count(done: pd.DataFrame, metric: str, claimed: str) -> str:
    """'k of N': the comparisons whose verdict is the claimed one, of all counted (N)."""
    return f"{int((_verdicts(done, metric) == claimed).sum())} of {len(done)}"


def _verdict_breakdown(done: pd.DataFrame, metric: str) -> str:
    """'a lower, b no difference, c higher' over the comparisons with an interval (and how many have none)."""
    v = _verdicts(done, metric)
    if v.isna().all():
        return NEEDS_SEEDS
    text = ", ".join(f"{int((v == x).sum())} {x}" for x in ("lower", "no difference", "higher"))
    return text + (f"; {int(v.isna().sum())} without an interval (1 seed)" if v.isna().any() else "")


def _one_significance(row: pd.Series, metric: str) -> str:
    if row["n"] < 2:
        return NEEDS_SEEDS
    return f"{'yes' if row[f'{metric} significant'] else 'no'} ({row['comparison']})"


def claims_table(comparison: pd.DataFrame, configured: int) -> pd.DataFrame:
    """The paper's headline figures from our complete pairs, beside the paper's: the counts ('k of N')
    are of verdicts (the comparison's 95% paired t interval excludes 0 on the claimed side), never of
    signs of means; the largest changes are means over seeds, with whether their interval excludes 0.
    Comparisons that did not learn or collapsed are left out, and the 'comparisons' column says how many."""
    needed = ["OPIS change %", change_column("R@1")]  # absent when no run has results at all
    done = comparison[comparison["n"] > 0].dropna(subset=needed) if set(needed) <= set(comparison) else comparison[:0]
    learned = done["learned"] if "learned" in done else pd.Series("unknown", index=done.index)
    excluded = {why: int((learned == why).sum()) for why in LEFT_OUT}
    done = done[~learned.isin(LEFT_OUT)]
    n = len(done)
    if n == 0:
        ours = dict.fromkeys(PAPER_CLAIMS, "missing")
        sig = dict.fromkeys(PAPER_CLAIMS, "missing")
        seeds = "missing"
    else:
        gain = done[change_column("R@1")]  # already in pp
        best_opis, best_gain, worst_gain = (done.loc[i] for i in (done["OPIS change %"].idxmin(), gain.idxmax(),
                                                                    gain.idxmin()))
        ours = {
            "comparisons where TCM lowered OPIS": _verdict_count(done, "OPIS", "lower"),
            "largest OPIS reduction": f"{-done['OPIS change %'].min():.1f}%",
            "comparisons where TCM raised Recall@1": _verdict_count(done, "R@1", "higher"),
            "largest Recall@1 gain (pp)": f"{gain.max():+.1f}",
            "largest Recall@1 drop (pp)": f"{gain.min():+.1f}" if (gain < 0).any() else "no drop",
        }
        sig = {
            "comparisons where TCM lowered OPIS": _verdict_breakdown(done, "OPIS"),
            "largest OPIS reduction": _one_significance(best_opis, "OPIS"),
            "comparisons where TCM raised Recall@1": _verdict_breakdown(done, "R@1"),
            "largest Recall@1 gain (pp)": _one_significance(best_gain, "R@1"),
            "largest Recall@1 drop (pp)": _one_significance(worst_gain, "R@1") if (gain < 0).any() else "",
        }
        lo, hi = int(done["n"].min()), int(done["n"].max())
        seeds = str(lo) if lo == hi else f"{lo} to {hi}"
    return pd.DataFrame({"claim": list(PAPER_CLAIMS), "paper": list(PAPER_CLAIMS.values()),
                         "ours": [ours[c] for c in PAPER_CLAIMS], SIGNIFICANCE: [sig[c] for c in PAPER_CLAIMS],
                         "comparisons": f"{n} complete of {configured} configured" + _left_out(excluded),
                         "seeds per comparison": seeds})


def _left_out(excluded: dict[str, int]) -> str:
    why = {"did not learn": "did not learn (R@1 at chance)",
           "collapsed": f"collapsed (negative-pair cosine median >= {COLLAPSE_NEG_COS_MEDIAN}, or R@1 with TCM more "
                        f"than {COLLAPSE_R1_DROP_PP:g} pp below without)"}
    return "".join(f"; {k} left out: {why[w]}" for w, k in excluded.items() if k)
