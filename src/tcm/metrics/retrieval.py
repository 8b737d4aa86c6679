"""Retrieval metrics, leave-one-out: every image queries all the others by cosine similarity.

For a query q with R = (images of q's class) - 1 and rel(i) = 1 when its i-th neighbour is of
its class:

    Recall@k     = mean_q  max_{i <= k} rel(i)             (= Precision@1 for k = 1)
    R-precision  = mean_q  (1/R) sum_{i <= R} rel(i)
    MAP@R        = mean_q  (1/R) sum_{i <= R} P@i * rel(i),   P@i = (1/i) sum_{j <= i} rel(j)
                                                            (Musgrave et al., ECCV 2020)

Neighbours are ordered by similarity, ties broken by ascending gallery index. A query whose
class has no other image (R = 0) is skipped, but the image stays in the gallery (and among the
negatives of the threshold metrics). Computed in chunks: see ``tcm.metrics.scan``; the retrieval
metrics alone are ``evaluate_embeddings(..., options=ScanOptions(threshold_metrics=False))`` (``tcm.metrics.suite``).
"""

from __future__ import annotations

from tcm.metrics.scan import RetrievalSums


def from_sums(sums: RetrievalSums) -> dict:
    """Averages over the queries.

    >>> from_sums(RetrievalSums(4, {1: 3}, 3.5, 3.0))
    {'recall_at_k': {'1': 0.75}, 'map_at_r': 0.875, 'r_precision': 0.75, 'num_queries': 4}
    """
    n = max(sums.n_queries, 1)
    return {"recall_at_k": {str(k): h / n for k, h in sums.hits.items()}, "map_at_r": sums.ap_sum / n,
            "r_precision": sums.r_precision_sum / n, "num_queries": sums.n_queries}

