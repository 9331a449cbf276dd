"""The web page's feedback in a real headless Chromium: ask → 👎 → 고쳐 쓰기 → export → the pair is there.

Needs Debian's `chromium` and `chromium-driver` (as tests/test_web_ui.py) and skips cleanly without them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("httpx")
pytest.importorskip("streamlit")

import httpx

from support.guide_index import mini_index

CORRECTION = "더스크는 하루 제한 없이 고정 피로도 30으로 돌 수 있어요."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_thumbs_down_and_correction_in_chromium_become_a_preference_pair(tmp_path):
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)  # fmt: skip
    driver_bin = shutil.which("chromedriver")
    if not browser or not driver_bin:
        pytest.skip(
            "needs the system chromium + chromedriver (Debian: apt-get install chromium chromium-driver)"
        )
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    mini_index(tmp_path)
    db = tmp_path / "feedback.sqlite3"
    env = dict(os.environ, DNFBOT_FEEDBACK_DB=str(db))
    port = _free_port()
    cmd = [sys.executable, "-m", "dnfbot", "ui", "--port", str(port), "--index-dir", str(tmp_path / "index")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "streamlit did not start"
            time.sleep(0.3)
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_bin))
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
        box.send_keys("더스크 피로도 얼마나 들어?")
        box.send_keys(Keys.ENTER)
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), '고정 피로도 30')]")))
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[aria-label='Thumbs down']"))).click()
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), '평가를 저장했어요')]")))
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stPopoverButton']"))).click()
        area = wait.until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "textarea[aria-label='맞는 답을 써 주세요']"))
        )
        area.send_keys(CORRECTION)
        send = "//button[.//*[normalize-space(text())='보내기']]"
        wait.until(ec.element_to_be_clickable((By.XPATH, send))).click()
        wait.until(
            ec.presence_of_element_located((By.XPATH, "//*[contains(text(), '고친 답변을 저장했어요')]"))
        )
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = tmp_path / "rm.jsonl"
    p = subprocess.run([sys.executable, "-m", "dnfbot", "feedback", "export", "--as", "rm", "--db", str(db),
                        "--out", str(out), "--json"], capture_output=True, text=True, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr
    pairs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(x["prompt"], x["chosen"]) for x in pairs] == [("더스크 피로도 얼마나 들어?", CORRECTION)]
    assert "고정 피로도 30" in pairs[0]["rejected"] and "[1]" not in pairs[0]["rejected"]
    stats = subprocess.run([sys.executable, "-m", "dnfbot", "feedback", "stats", "--db", str(db), "--json"],
                           capture_output=True, text=True, env=env)  # fmt: skip
    s = json.loads(stats.stdout)
    assert s["by_channel"] == {"web": 1} and s["feedback"]["rows"] == 2 and s["feedback"]["down"] == 1
