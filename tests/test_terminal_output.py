"""What a person watching `dvc repro` in a terminal sees: a first line per stage saying what it does,
progress lines (naming run and seed) while a stage runs, no kernel transport or alt-text warnings.

The pipeline runs once under a real pseudo-terminal (pty), each read timestamped."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import copy_project, tiny_params

from tcm.cli.run_notebook import describe
from tcm.progress import Progress

RUN = "digits-ms"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> list[tuple[float, str]]:
    """(seconds since start when read, line) of everything ``cmd`` writes to its terminal."""
    master, slave = pty.openpty()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    lines: list[tuple[float, str]] = []
    pending = ""
    try:
        while True:
            if time.monotonic() - start > timeout:
                proc.kill()
                raise AssertionError(f"{cmd} ran past {timeout} s:\n" + "\n".join(x for _, x in lines[-50:]))
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            now = time.monotonic() - start
            pending += ANSI.sub("", chunk.decode(errors="replace"))
            *done, pending = re.split(r"\r\n|\n|\r", pending)
            lines.extend((now, x) for x in done if x.strip())
    finally:
        os.close(master)
        rc = proc.wait()
    if pending.strip():
        lines.append((time.monotonic() - start, pending))
    assert rc == 0, "\n".join(x for _, x in lines[-80:])
    return lines


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> list[tuple[float, str]]:
    params = tiny_params((RUN,), mlflow=True)  # mlflow: the report renders the stage notebooks to HTML
    # Small batches and chunks: the evaluate stage's embedding and similarity loops take several steps.
    params["evaluation"].update(batch_size=64, chunk_size=128)
    dest = copy_project(tmp_path_factory.mktemp("term"), params)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(dest / "src"), "DVC_NO_ANALYTICS": "1", "TCM_PROGRESS_SECONDS": "0",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    lines = run_in_pty(["dvc", "repro"], dest, env)
    (dest / "repro.log").write_text("\n".join(f"{t:8.2f} {x}" for t, x in lines))
    return lines


def _stages(lines: list[tuple[float, str]]) -> dict[str, list[tuple[float, str]]]:
    """The lines of each stage, from dvc's "Running stage 'NAME'" to the next one."""
    out: dict[str, list[tuple[float, str]]] = {}
    current = None
    for t, x in lines:
        m = re.search(r"Running stage '([^']+)'", x)
        if m:
            current = m.group(1)
            out[current] = []
        elif current is not None:
            out[current].append((t, x))
    return out


@pytest.mark.e2e
def test_training_progress_arrives_while_the_stage_runs_and_names_run_and_seed(repro) -> None:
    train = _stages(repro)[f"train@{RUN}"]
    steps = [(t, x) for t, x in train if re.search(r"epoch \d+/\d+: step \d+/\d+", x)]
    assert steps, "\n".join(x for _, x in train)
    assert all(x.lstrip().startswith(f"{RUN} seed 0 epoch ") for _, x in steps), steps
    # Read (timestamped) before the stage's last line: streamed, not held until the cell ends.
    assert steps[0][0] < train[-1][0], (steps[0], train[-1])
    epochs = [x for _, x in train if re.search(rf"^{RUN} seed 0 epoch \d+/\d+: loss", x.lstrip())]
    assert len(epochs) == 2, train


@pytest.mark.e2e
def test_evaluation_progress_names_run_and_seed(repro) -> None:
    evaluate = _stages(repro)[f"evaluate@{RUN}"]
    text = "\n".join(x for _, x in evaluate)
    assert re.search(rf"{RUN} seed 0: embedding: batch \d+/\d+", text), text
    assert re.search(rf"{RUN} seed 0: similarities: chunk \d+/\d+", text), text


@pytest.mark.e2e
def test_no_kernel_transport_or_alt_text_warnings(repro) -> None:
    text = "\n".join(x for _, x in repro)
    assert "Running stage 'report'" in text
    assert "[IPKernelApp] WARNING" not in text and "running over TCP" not in text
    assert "Alternative text" not in text


@pytest.mark.e2e
def test_each_stage_first_says_what_it_does(repro) -> None:
    stages = _stages(repro)
    expected = {"data@digits": "tcm: data digits: preparing ", "pretrain@digits": "tcm: pretrain digits: ",
                f"train@{RUN}": f"tcm: train {RUN}: 1 seed (0) x 2 epochs, device ",
                f"evaluate@{RUN}": f"tcm: evaluate {RUN}: 1 seed on the test split of digits",
                "report": "tcm: report: tables and figures of 1 run"}
    for stage, start in expected.items():
        # dvc echoes the command ("> tcm notebook ..."); the stage's own first tcm line comes next.
        own = [x for _, x in stages[stage] if x.lstrip().startswith("tcm")]
        assert own and own[0].startswith(start), (stage, [x for _, x in stages[stage]][:10])


# --------------------------------------------------------------------------- the pieces, without a pipeline


def test_progress_prints_plain_lines_where_stderr_is_no_terminal(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("TCM_PROGRESS_SECONDS", "0")
    bar = Progress(range(3), "r seed 1 epoch 2/5")
    for i in bar:
        bar.set_postfix(loss=f"{i / 10:.4f}", img_s="812")
    # a line per step but the last (the epoch's own summary line follows it)
    assert err.getvalue().splitlines() == ["r seed 1 epoch 2/5: step 1/3, loss 0.0000, 812 img/s",
                                           "r seed 1 epoch 2/5: step 2/3, loss 0.1000, 812 img/s"]
    err.truncate(0)
    assert list(Progress(range(3), "x", enabled=False)) == [0, 1, 2] and err.getvalue() == ""
    monkeypatch.setenv("TCM_PROGRESS_SECONDS", "3600")
    assert list(Progress(range(3), "x")) == [0, 1, 2] and err.getvalue() == ""


def test_describe_needs_no_heavy_imports(tmp_path) -> None:
    from conftest import write_params

    path = write_params(tmp_path / "params.yaml", tiny_params((RUN,), seeds=(0, 3)))
    code = ("import sys; from pathlib import Path; from tcm.cli.run_notebook import describe; "
            f"print(describe(Path('notebooks/02_train.ipynb'), {{'run': '{RUN}', 'params_path': '{path}'}})); "
            "print(sorted(m for m in ('torch', 'papermill', 'jupyter_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(f"tcm: train {RUN}: 2 seeds (0, 3) x 2 epochs, device ")
    assert out[1] == "[]"
    assert describe(Path("notebooks/02_train.ipynb"), {"params_path": str(tmp_path / "missing.yaml")}) == \
        "tcm: train: running notebooks/02_train.ipynb"
    assert describe(Path("notebooks/explore_run.ipynb"), {}) is None  # no stage's notebook: no line


def test_notebook_html_gives_every_image_alt_text(tmp_path, capfd, caplog) -> None:
    import base64

    from tcm.report import notebook_html

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    out = [nbformat.v4.new_output("display_data", data={"image/png": png}),
           nbformat.v4.new_output("display_data", data={"image/png": png}, metadata={"image/png": {"alt": "mine"}})]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("plot_history(h)\nmore()", outputs=out)])
    nbformat.write(nb, tmp_path / "n.ipynb")
    html = notebook_html(tmp_path / "n.ipynb", tmp_path).read_text()
    assert re.findall(r'<img alt="([^"]*)"', html) == ["figure drawn by the cell: plot_history(h)", "mine"]
    assert html.count("<img") == 2
    captured = capfd.readouterr()
    assert "Alternative text" not in captured.out + captured.err + caplog.text


def test_kernel_sockets_fall_back_to_tcp_where_a_unix_socket_path_would_be_too_long(tmp_path) -> None:
    from tcm.cli.run_notebook import _kernel_manager

    manager = _kernel_manager(tmp_path)["kernel_manager_class"]()
    assert manager.transport == "ipc" and manager.ip.startswith(str(tmp_path))
    assert _kernel_manager(tmp_path / ("x" * 120))["kernel_manager_class"]().transport == "tcp"
