"""The MLflow UI, started on 127.0.0.1 against the pipeline's SQLite store and driven in headless
Chromium, lists the configurations (parent runs, their seeds folded beneath) and compares their
OPIS and Recall@1 (mean over seeds) and a figure of each, side by side.

By default it runs on the test pipeline's store and keeps its screenshot in a temporary folder. The
README's screenshot shows the default's results:

    TCM_UI_STORE=mlflow.db TCM_UI_SCREENSHOT=reports/screenshots/mlflow_compare.png \
        python -m pytest tests/test_mlflow_ui.py     # after `dvc repro` of the default
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import E2E_RUNS

pytestmark = pytest.mark.e2e
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
STORE = os.environ.get("TCM_UI_STORE")  # another store to show (the default's mlflow.db)
SCREENSHOT = os.environ.get("TCM_UI_SCREENSHOT")  # where to keep the screenshot


# Bounds, not expectations: generous so that a machine 5x slower than a quiet one still passes.
STARTUP_S = 300
RENDER_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def mlflow_ui(project: Path):
    port = _free_port()
    store = Path(STORE).resolve() if STORE else project / "mlflow.db"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                             f"sqlite:///{store}", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # Poll readiness with a generous bound: on a loaded 2-core machine start-up can take minutes.
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow ui exited during start-up")
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow ui did not answer within {STARTUP_S} s")
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for_text(driver, texts: list[str], seconds: float = RENDER_S) -> str:
    deadline = time.monotonic() + seconds
    while True:
        body = driver.find_element("tag name", "body").text
        if all(t in body for t in texts) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def _find(driver, xpath: str, seconds: float = RENDER_S) -> list:
    deadline = time.monotonic() + seconds
    while True:
        found = driver.find_elements("xpath", xpath)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_ui_groups_seeds_under_configurations_and_compares_them(mlflow_ui: str, browser, tmp_path: Path) -> None:
    exp = _post(mlflow_ui + "/ajax-api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
    exp_id = next(e["experiment_id"] for e in exp if e["name"] == "tcm-default")
    runs = _post(mlflow_ui + "/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 1000})[
        "runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parents = {r["info"]["run_name"]: r["info"]["run_id"] for r in runs
               if tags[r["info"]["run_id"]].get("tcm.role") == "configuration"}
    if not STORE:
        assert sorted(parents) == sorted(E2E_RUNS)
    seeds = [r for r in runs if "tcm.seed" in tags[r["info"]["run_id"]]]
    assert seeds and all(tags[r["info"]["run_id"]]["mlflow.parentRunId"] in parents.values() for r in seeds)

    # The experiment opens on its runs table, one row per configuration; its seeds are folded beneath it.
    browser.get(f"{mlflow_ui}/#/experiments/{exp_id}/runs")
    body = _wait_for_text(browser, list(parents))
    for name in parents:
        assert name in body, f"configuration {name} not listed on the experiment page"
    assert not any(r["info"]["run_name"] in body for r in seeds), "seed runs are not grouped under their parent"

    # Compare the configurations: their mean and sd over seeds, and a figure of each side by side.
    ids = list(parents.values())
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp_id])})
    browser.get(f"{mlflow_ui}/#/compare-runs?{query}")
    _wait_for_text(browser, ["Comparing"])
    for close in browser.find_elements("xpath", "//button[@aria-label='Close']"):
        close.click()  # the assistant side panel would cover the table in the screenshot
    cells = _find(browser, "//*[normalize-space(text())='test.opis.mean']")
    assert cells, "the comparison view shows no test.opis.mean row"
    assert browser.find_elements("xpath", "//*[normalize-space(text())='test.recall_at_k.1.mean']")
    figure = _find(browser, "//*[normalize-space(text())='utility.png']")
    assert figure, "the comparison's Artifacts show no common utility.png"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure[0])
    browser.execute_script("arguments[0].click()", figure[0])  # (a native click may land on a side panel)
    images = []
    deadline = time.monotonic() + RENDER_S
    while len(images) < len(ids) and time.monotonic() < deadline:
        images = [i for i in browser.find_elements("tag name", "img")
                  if "utility.png" in (i.get_attribute("src") or "") + (i.get_attribute("alt") or "")
                  and browser.execute_script("return arguments[0].naturalWidth", i) > 0]
        time.sleep(0.5)
    assert len(images) >= len(ids), f"{len(images)} of {len(ids)} utility.png figures shown side by side"
    # the screenshot: the metrics (mean and sd over seeds) above the figures side by side
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure[0])
    time.sleep(1)
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "mlflow_compare.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
