"""params.yaml -> Config: every bad key, type or value is refused with a message naming it."""

from __future__ import annotations

import copy

import pytest
from conftest import REPO, repo_params, write_params

from tcm.cli import main
from tcm.config import ConfigError, deep_merge, load_config, parse_config, resolved_run


def test_repository_params_are_valid() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert set(cfg.runs) == {"glyphs-ms", "glyphs-ms-tcm", "glyphs-pa", "glyphs-pa-tcm"}
    # run_defaults are merged under each run: the TCM runs differ only in tcm.enabled
    a, b = resolved_run(cfg, "glyphs-ms"), resolved_run(cfg, "glyphs-ms-tcm")
    assert a["tcm"]["enabled"] is False and b["tcm"]["enabled"] is True
    same = ("run", "tcm")
    assert {k: v for k, v in a.items() if k not in same} == {k: v for k, v in b.items() if k not in same}
    assert cfg.runs["glyphs-pa"].loss.name == "proxy_anchor"
    assert cfg.base_dir == REPO
    # The default fine-tunes the pretrain stage's backbone, with TCM margins set by the train-split rule.
    assert cfg.dataset("glyphs").pretrain is not None and cfg.dataset("glyphs").glyphs.test_classes >= 100
    assert str(cfg.runs["glyphs-ms"].model.weights_path) == "pretrained/glyphs/backbone.pt"
    assert cfg.runs["glyphs-ms-tcm"].tcm.margins == "train_quantiles"


def test_loss_params_table_matches_the_loss_classes(monkeypatch) -> None:
    from tcm.config import LOSS_PARAMS, RegistryError
    from tcm.losses import registry
    from tcm.losses.registry import BASE_LOSSES, accepted_loss_params

    assert list(LOSS_PARAMS) == list(BASE_LOSSES)
    for name, accepted in LOSS_PARAMS.items():
        assert list(accepted) == accepted_loss_params(name), name
    # What importing tcm.losses checks: a parameter the constructor does not take (or one it takes left out).
    monkeypatch.setitem(LOSS_PARAMS, "contrastive", {**LOSS_PARAMS["contrastive"], "margin": float})
    with pytest.raises(RegistryError, match=r"\['contrastive'\] declares \['margin', 'neg_margin', 'pos_margin'\]"):
        registry._check_declared_params()


def test_validating_params_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (f"import sys; from tcm.config import load_config; load_config({str(REPO / 'params.yaml')!r}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_deep_merge_overrides_leaves_and_keeps_siblings() -> None:
    base = {"train": {"epochs": 10, "lr": 0.1}, "tags": [1, 2]}
    assert deep_merge(base, {"train": {"epochs": 3}, "tags": [3]}) == {"train": {"epochs": 3, "lr": 0.1}, "tags": [3]}
    assert base["train"]["epochs"] == 10  # inputs untouched


def _error(mutate) -> str:
    raw = copy.deepcopy(repo_params())
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # typo'd keys, in sections whose stages might not re-run too
        (lambda r: r["evaluation"]["opis"].update(bta=1.0), ["evaluation.opis.bta", "unknown key", "beta"]),
        (lambda r: r.update(mlfow={}), ["params.yaml: mlfow: unknown key", "mlflow"]),
        (lambda r: r["runs"]["digits-pa"].update(tcm={"enabeld": True}), ["runs.digits-pa.tcm.enabeld", "enabled"]),
        # a typo in run_defaults is reported where it was written, not under every run
        (lambda r: r["run_defaults"]["train"].update(epohcs=3), ["run_defaults.train.epohcs", "unknown key", "epochs"]),
        (lambda r: r["datasets"]["digits"].update(hlfip=True), ["datasets.digits.hlfip", "hflip"]),
        # wrong types
        (lambda r: r["run_defaults"]["train"].update(epochs="ten"), ["run_defaults.train.epochs", "integer", "'ten'"]),
        (lambda r: r["evaluation"].update(recall_k="1,2"), ["evaluation.recall_k", "list"]),
        # impossible values
        (lambda r: r["runs"]["digits-ms"].update(loss={"name": "multisim"}),
         ["runs.digits-ms.loss.name", "'multi_similarity'", "'proxy_anchor'", "'multisim'"]),
        (lambda r: r["runs"]["digits-ms"].update(train={"epochs": -1}),
         ["runs.digits-ms.train.epochs", "greater than 0"]),
        (lambda r: r["run_defaults"]["tcm"].update(neg_margin=0.95),
         ["neg_margin", "must be below pos_margin", "0.95"]),
        (lambda r: r["runs"]["digits-ms"].update(dataset="cub"),
         ["runs.digits-ms.dataset", "unknown dataset 'cub'", "digits"]),
        (lambda r: r["run_defaults"]["loss"].update(params={"alpah": 2}), ["loss", "alpah", "accepted", "alpha"]),
        (lambda r: r["run_defaults"]["train"].update(batch_size=81),
         ["batch_size (81) must be a multiple of m_per_class"]),
        (lambda r: r["evaluation"]["opis"].update(far_range=[0.2, 0.1]),
         ["evaluation.opis.far_range", "0 < low < high < 1"]),
        (lambda r: r["mlflow"].update(tracking_uri="./mlruns"), ["mlflow.tracking_uri", "sqlite"]),
        (lambda r: r["datasets"]["digits"].update(train_classes=list(range(10))), ["train_classes", "proper subset"]),
    ],
)
def test_bad_params_name_the_key_and_what_is_accepted(mutate, expected: list[str]) -> None:
    message = _error(mutate)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_runs_must_be_a_non_empty_mapping_and_name_their_dataset() -> None:
    assert "runs: expected a non-empty mapping" in _error(lambda r: r.update(runs={}))
    assert "runs.digits-pa.dataset: required in each run" in _error(lambda r: r["runs"]["digits-pa"].pop("dataset"))


def test_unreadable_and_invalid_yaml_files_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line 2: not valid YAML"):
        load_config(bad)


def test_check_params_cli_exits_2_with_one_line_and_writes_no_stamp(tmp_path, capsys) -> None:
    raw = repo_params()
    raw["run_defaults"]["train"]["lr"] = -1
    params = write_params(tmp_path / "params.yaml", raw)
    stamp = tmp_path / "stamp"
    assert main(["check-params", "--params", str(params), "--stamp", str(stamp)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tcm: error:") and "run_defaults.train.lr" in err and "Traceback" not in err
    assert not stamp.exists()

    write_params(params, repo_params())
    assert main(["check-params", "--params", str(params), "--stamp", str(stamp)]) == 0
    assert stamp.read_text() == "params.yaml validated\n"  # constant: no parameter values in it
