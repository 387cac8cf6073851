"""`metis app`: the model picker finds local model sets and exports; a real headless Chromium uploads a
file, runs a task and gets audio back (skipped, saying why, where no browser is installed)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metis.app import LABELS, PUBLISHED, Models, find_exports, find_model_sets, run_task, visible_fields
from metis import tasks as registry
from metis.inference.tasks import TASKS

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def test_picker_lists_published_sets_and_lora_exports(models, tmp_path):
    sets = find_model_sets([models["root"]])
    assert list(sets) == [str(models["set"])]
    assert sets[str(models["set"])]["metis"] == str(models["set"] / "metis")  # pipeline.yaml paths resolve against the set
    layout = tmp_path / "hub"
    for sub in ("metis", "MaskGCT", "w2v-bert-2.0"):
        (layout / sub).mkdir(parents=True)
    assert find_model_sets([tmp_path])[str(layout)] == {"metis": str(layout / "metis"), "maskgct": str(layout / "MaskGCT"),
                                                         "w2v_bert": str(layout / "w2v-bert-2.0")}
    exports = find_exports([models["root"]])
    assert [(e.path, e.task, e.note) for e in exports] == [(models["export"], "se", "LoRA r=16, merged")]


def test_every_task_has_its_fields():
    for task in TASKS:
        shown = visible_fields(task)
        assert {k for k, v in shown.items() if v} == set(registry.get(task).request_fields), task


def test_run_task_with_an_export_and_refuses_the_wrong_task(models, speech):
    m = Models(find_model_sets([models["root"]]), find_exports([models["root"]]))
    label = m.exports[0].label
    (sr, wav), in_spec, out_spec, status = run_task(m, str(models["set"]), label, "se", str(speech), None, "", "", None,
                                                    3, 0.0, 0.9, 0, None)
    assert sr == 24000 and wav.dtype == np.int16 and wav.size > 24000 and np.abs(wav).max() > 0
    assert in_spec.ndim == 3 and out_spec.shape[-1] == 3 and "se:" in status
    with pytest.raises(ValueError, match="is a se model"):
        run_task(m, str(models["set"]), label, "vc", str(speech), str(speech), "", "", None, 3, 1.0, 0.9, 0, None)
    with pytest.raises(ValueError, match="task tse needs prompt"):
        run_task(m, str(models["set"]), PUBLISHED, "tse", str(speech), None, "", "", None, 3, 0.0, 0.9, 0, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
    if not (CHROMIUM and DRIVER):
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (scripts/setup.sh does, from .ci/apt.txt)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1500",
                "--disable-background-networking", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_browser_uploads_runs_a_task_and_gets_audio(models, speech, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from metis.app import serve

    port = _free_port()
    app = serve(Models(find_model_sets([models["root"]]), find_exports([models["root"]])), port=port, block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 300)
        wait.until(EC.presence_of_element_located((By.ID, "task")))
        browser.find_element(By.XPATH, f"//*[@id='task']//label[contains(., '{LABELS['se']}')]").click()
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input_audio input[type=file]")))
        upload.send_keys(str(speech))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input_audio a[data-testid=download-link]")))  # uploaded
        steps = browser.find_element(By.CSS_SELECTOR, "#n_timesteps input[type=number]")
        steps.clear()
        steps.send_keys("3")
        browser.find_element(By.ID, "run").click()
        status = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value") or None)
        assert status.startswith("se: "), status
        src = wait.until(lambda d: next((a.get_attribute("href") for a in
                                         d.find_elements(By.CSS_SELECTOR, "#output_audio a[data-testid=download-link]")
                                         if a.get_attribute("href")), None))
        assert src.startswith(f"http://127.0.0.1:{port}/"), src  # served by the app itself
        wav, sr = sf.read(io.BytesIO(urllib.request.urlopen(src, timeout=60).read()))
        assert sr == 24000 and wav.size > sr and np.abs(wav).max() > 0
        assert browser.find_elements(By.CSS_SELECTOR, "#output_spec img") and browser.find_elements(By.CSS_SELECTOR, "#input_spec img")
        requested = {json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url", "")
                     for e in browser.get_log("performance")}
        remote = sorted(u for u in requested if u.startswith(("http:", "https:", "ws:", "wss:"))
                        and urllib.parse.urlsplit(u).hostname not in ("127.0.0.1", "localhost"))
        assert any(u.startswith(f"http://127.0.0.1:{port}/") for u in requested)  # the log does record the page's requests
        assert not remote, f"the page fetched from outside this machine: {remote}"
        time.sleep(1)
        shot = Path(os.environ.get("METIS_APP_SCREENSHOT", tmp_path / "app.png"))
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        app.close()


def test_configured_set_takes_the_command_line_overrides():
    from metis.app import CONFIGURED, preset_sets

    sets = preset_sets(["pipeline.metis=/models/metis", "pipeline.batch_size=2"])
    assert sets[CONFIGURED]["metis"] == "/models/metis" and sets[CONFIGURED]["batch_size"] == 2
    assert "_target_" not in sets[CONFIGURED]
