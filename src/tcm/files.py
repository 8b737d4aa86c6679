"""Names of the files each run writes under ``runs/<run>/`` (one place, so readers such as the
report need not import the training code and its heavy dependencies)."""

CHECKPOINT = "checkpoint.pt"  # train: model, optimizer and loop state, rewritten every epoch
HISTORY = "history.csv"  # train: one row per epoch
RUN_INFO = "run.json"  # train: resolved settings and the MLflow run id
METRICS = "metrics.json"  # evaluate: Recall@k, MAP@R, OPIS, eps-OPIS, threshold report
EMBEDDINGS = "embeddings.npz"  # evaluate: test embeddings and labels
CURVES = "curves.csv"  # evaluate: per-class TPR / TNR / utility over the calibration range
