"""A seed's network as an MLflow model (tcm.mlflow_log.log_model): PyTorch's pt2 export with an
input example and signature, opened by mlflow.pytorch and mlflow.pyfunc, and registered on request
(``mlflow.register_model``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_params, write_params

from tcm.config import load_config
from tcm.mlflow_log import fixed_names, log_model, summary_metrics
from tcm.models import build_model
from tcm.tracking import Tracker, store_uris

pytest.importorskip("mlflow")


@pytest.mark.slow
def test_logged_model_embeds_a_batch_and_is_registered_on_request(tmp_path) -> None:
    import mlflow
    import mlflow.pytorch

    params = tiny_params(("digits-ms",), mlflow=True)
    params["mlflow"]["register_model"] = True
    cfg = load_config(write_params(tmp_path / "params.yaml", params))
    tracker = Tracker(cfg)
    run_id = tracker.start_run("digits-ms", {"x": 1}, stage="evaluate", seed=0)
    model = build_model(cfg.run("digits-ms").model).eval()
    example = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    log_model(tracker, cfg, run_id, "digits-ms", model, {"epoch": 2, "seed": 0, "optimizer": {}}, example)
    tracker.end_run(run_id)

    mlflow.set_tracking_uri(store_uris(cfg)[0])
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert info.metadata["tcm"] == {"epoch": 2, "seed": 0} and info.signature.inputs.inputs[0].shape[0] == -1
    batch = torch.rand(5, 3, 32, 32)
    for uri in (f"runs:/{run_id}/model", "models:/tcm-default-digits-ms/1"):  # registered as <experiment>-<run>
        loaded = mlflow.pytorch.load_model(uri)
        assert torch.allclose(loaded(batch), model(batch), atol=1e-5)
    assert mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(batch.numpy()).shape == (5, 64)


def test_figures_get_names_equal_across_runs(tmp_path) -> None:
    figs = [tmp_path / n for n in ("utility_glyphs_cnn_ms.png", "embeddings_glyphs_cnn_ms.png",
                                   "utility_run_glyphs-ms.png")]
    assert fixed_names("glyphs-ms", figs) == {"utility_pair.png": figs[0], "embeddings_pair.png": figs[1],
                                              "utility.png": figs[2]}


def test_summary_is_the_mean_and_sd_over_seeds() -> None:
    out = summary_metrics({0: {"opis": 0.1, "recall_at_k": {"1": 0.5}, "num_queries": 9},
                           1: {"opis": 0.3, "recall_at_k": {"1": 0.7}, "num_queries": 9}})
    assert out == pytest.approx({"test.opis.mean": 0.2, "test.opis.sd": 2 ** 0.5 / 10,
                                 "test.recall_at_k.1.mean": 0.6, "test.recall_at_k.1.sd": 2 ** 0.5 / 10})
