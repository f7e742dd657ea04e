"""The board in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
selenium) against a real ``adaptune board`` process on loopback.

One walk through the page: it opens in the browser's language (Chinese), switches to English, shows a bad upload's
file, line and field, previews a good one, starts a run on the tiny random BERT, shows the chart growing, the
report and the worst errors, predicts on typed text, and switches back to Chinese. Screenshots go to
``$ADAPTUNE_BOARD_SCREENSHOTS`` (default: the test's tmp_path); with ``ADAPTUNE_BOARD_README_PNG`` set, the report
view is also saved there (the README's ``docs/board.png``). Under ``CI`` a missing browser fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from board_kit import wait_for
from serving_kit import free_port

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _needs_browser() -> None:
    missing = [name for name, found in (("chromium", BROWSER), ("chromium-driver", DRIVER)) if not found]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (the test extra)")
    if not missing:
        return
    message = f"browser tests need {', '.join(missing)}: scripts/setup.sh --test installs them"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def board_url(board_dirs: tuple[Path, Path], tmp_path: Path) -> Iterator[str]:
    """A real ``adaptune board`` on a free loopback port over the test's folders."""
    runs, data = board_dirs
    port = free_port()
    command = [sys.executable, "-m", "adaptune", "board", "--port", str(port), "--runs", str(runs), "--data", str(data)]
    log = (tmp_path / "board-server.log").open("wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: proc.poll() is not None or _listening(port), timeout=60, what="the board to listen")
        assert proc.poll() is None, (tmp_path / "board-server.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _needs_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(BROWSER)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.add_argument("--lang=zh-CN")  # navigator.language: the page must open in Chinese
    options.add_experimental_option("prefs", {"intl.accept_languages": "zh-CN,zh"})
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    """Saves numbered screenshots under ``$ADAPTUNE_BOARD_SCREENSHOTS`` (default ``tmp_path``)."""

    def __init__(self, driver: Any, folder: Path) -> None:
        self.driver, self.folder, self.count = driver, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"board-{self.count:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _visible(driver: Any, css: str) -> bool:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return bool(found) and found[0].is_displayed()


def _set(driver: Any, css: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, css)
    field.clear()
    field.send_keys(value)


def test_the_board_in_a_browser(board_url: str, browser: Any, board_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _runs, data = board_dirs
    shots = Shots(browser, Path(os.environ.get("ADAPTUNE_BOARD_SCREENSHOTS") or tmp_path / "screenshots"))
    browser.get(board_url)
    wait_for(lambda: _text(browser, "#start-btn") == "开始训练", timeout=30, what="the page in Chinese")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#f-training-max_steps"), what="the schema form")
    assert _text(browser, "#nav-new") == "新建训练"
    shots.take("chinese")
    Select(browser.find_element(By.ID, "lang")).select_by_value("en")
    wait_for(lambda: _text(browser, "#start-btn") == "Start training", what="the page in English")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello", "label": "greeting"}\n{"text": "hi", "labl": "greeting"}\n', encoding="utf-8")
    browser.find_element(By.ID, "upload-train").send_keys(str(bad))
    wait_for(lambda: _visible(browser, "#preview-error .error-line"), what="the upload's error")
    assert _text(browser, "#preview-error .error-file").endswith("uploads/bad.jsonl")
    assert _text(browser, "#preview-error .error-line") == "2"
    assert _text(browser, "#preview-error .error-field") == "label"
    shots.take("bad-upload")

    browser.find_element(By.ID, "upload-train").send_keys(str(data / "train.jsonl"))
    wait_for(lambda: _visible(browser, "#preview-labels tbody tr"), what="the preview")
    assert not _visible(browser, "#preview-error")
    _set(browser, "#data-dev", "dev.jsonl")
    _set(browser, "#model", str(data / "tiny"))
    Select(browser.find_element(By.ID, "method")).select_by_value("lora")
    Select(browser.find_element(By.ID, "f-model-pooling")).select_by_value("mean")
    for key, value in (("max_steps", "80"), ("eval_every", "10"), ("log_every", "1")):
        _set(browser, f"#f-training-{key}", value)
    for key, value in (("max_length", "32"), ("batch_size", "8")):
        _set(browser, f"#f-data-{key}", value)
    _set(browser, "#run-name", "browser-run")
    shots.take("form")
    browser.find_element(By.ID, "start-btn").click()

    points = lambda: int(browser.find_element(By.ID, "chart").get_attribute("data-points"))  # noqa: E731
    first = wait_for(points, timeout=120, what="the first metrics on the chart")
    wait_for(lambda: points() > first, timeout=120, what="the chart to update")
    shots.take("training")
    wait_for(lambda: _visible(browser, ".split-report table.scores"), timeout=180, what="the report")
    assert browser.find_element(By.ID, "run-status").get_attribute("data-status") == "finished"
    assert _visible(browser, "table.confusion") and _visible(browser, "#errors table.error-rows")
    assert _text(browser, "#stat-step") == "80"
    readme_png = os.environ.get("ADAPTUNE_BOARD_README_PNG")
    if readme_png:
        browser.save_screenshot(readme_png)
    shots.take("report")

    _set(browser, "#try-text", "where is my parcel?")
    browser.find_element(By.ID, "try-btn").click()
    wait_for(lambda: _visible(browser, "table.probabilities tr"), timeout=60, what="the prediction")
    labels = {row.get_attribute("data-label") for row in browser.find_elements(By.CSS_SELECTOR, ".probabilities tr")}
    assert "order_status" in labels and len(labels) >= 5
    shots.take("try")

    Select(browser.find_element(By.ID, "lang")).select_by_value("zh-CN")
    wait_for(lambda: _text(browser, "#run-status") == "已完成", what="the status in Chinese")
    browser.find_element(By.ID, "nav-runs").click()
    wait_for(lambda: _visible(browser, '#runs-table tr[data-run="browser-run"]'), what="the runs list")
    assert "已完成" in _text(browser, '#runs-table tr[data-run="browser-run"]')
    shots.take("runs-chinese")
    assert not browser.find_elements(By.CSS_SELECTOR, "#page-error:not([hidden])")
