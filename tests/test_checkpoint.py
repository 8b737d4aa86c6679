"""Checkpoints hold only tensors and plain values: one holding a pickled object is refused."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params, write_params

from tcm.checkpoint import load_trained, read_checkpoint, save_checkpoint
from tcm.cli import main
from tcm.runfiles import CheckpointError


class Payload:
    """Unpickling this would call print: code run by merely loading the file."""

    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_plain_checkpoint_round_trips(tmp_path) -> None:
    state = {"model": {"w": torch.ones(2)}, "epoch": 3, "history": [{"loss": 0.5}], "settings": {"a": [1, 2]}}
    save_checkpoint(tmp_path / "c.pt", state)
    back = read_checkpoint(tmp_path / "c.pt")
    assert back["epoch"] == 3 and back["history"] == [{"loss": 0.5}] and torch.equal(back["model"]["w"], torch.ones(2))


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "settings": {}, "extra": Payload()}, path)
    for load in (read_checkpoint, load_trained):
        with pytest.raises(CheckpointError, match=r"evil\.pt: refused: .*pickled Python object \(print\)"):
            load(path)
    assert "code ran" not in capsys.readouterr().out


def test_truncated_checkpoint_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"c\.pt: not a readable checkpoint"):
        read_checkpoint(path)


def test_evaluate_cli_refuses_a_pickled_checkpoint_in_one_line(tmp_path, capsys) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_params(runs=("digits-ms",)))
    path = tmp_path / "runs/digits-ms/train/seed-0/checkpoint.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "extra": Payload()}, path)
    assert main(["evaluate", "--run", "digits-ms", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tcm: error: ") and "refused" in err[0], err


@pytest.mark.slow
def test_a_model_that_cannot_be_builtfails_in_one_line_and_keeps_the_checkpoints(tmp_path, capsys) -> None:
    params = tiny_params(runs=("digits-ms",), epochs=1)
    params["paths"] = {"data": str(tmp_path / "data"), "runs": str(tmp_path / "runs"), "reports": str(tmp_path)}
    good = write_params(tmp_path / "params.yaml", params)
    assert main(["data", "prepare", "digits", "--params", str(good)]) == 0
    assert main(["train", "digits-ms", "--params", str(good)]) == 0
    ckpt = tmp_path / "runs/digits-ms/train/seed-0/checkpoint.pt"
    before = ckpt.read_bytes()
    params["run_defaults"]["model"]["pretrained"] = True  # no ImageNet weights exist for the small CNN
    bad = write_params(tmp_path / "bad.yaml", params)
    capsys.readouterr()
    assert main(["train", "digits-ms", "--params", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tcm: error: model.pretrained: no ImageNet weights exist for backbone 'small_cnn'; "
                   "set pretrained: false"], err
    assert ckpt.read_bytes() == before
