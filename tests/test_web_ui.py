"""The web chat page: its pure helpers, the Streamlit script run headless (AppTest), and a real headless Chromium.

The browser test needs Debian's `chromium` and `chromium-driver` (selenium drives the system browser; nothing is
downloaded) and skips cleanly without them. With DNFBOT_UPDATE_DOCS=1 it refreshes docs/serving-ui.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("streamlit")  # the serve extra

import httpx

from dnfbot import NO_INFO_ANSWER
from dnfbot.config import Settings
from dnfbot.retrieval.sparse import Filters
from dnfbot.serve.ui_support import (
    backend_label,
    board_label,
    category_tree,
    filters_caption,
    filters_for,
)
from support.guide_index import mini_index

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "src" / "dnfbot" / "serve" / "ui_app.py"
SCREENSHOT = REPO / "docs" / "serving-ui.png"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return mini_index(tmp_path_factory.mktemp("web_ui"))


# --- pure helpers --------------------------------------------------------------------------------------------
def test_category_tree_and_filters(index_dir):
    from dnfbot.retrieval.index import open_index

    idx, _ = open_index(index_dir, Settings(home=index_dir.parent))
    tree = category_tree(idx.chunks)
    assert tree.dungeons == {
        "레이드": ["[레이드] 아스라한 : 무의 장막"],
        "레기온": ["[레기온] 어둑섬"],
        "기타 던전": ["상급 던전"],
    }
    assert tree.equipment == ["커스텀"] and len(tree.classes) == 2
    assert (
        board_label("[레이드] 아스라한 : 무의 장막") == "아스라한 : 무의 장막"
        and board_label("커스텀") == "커스텀"
    )
    assert filters_for("전체", "레이드", "x") == Filters()
    assert filters_for("공략", "레이드", "전체") == Filters("공략", "레이드", None)
    assert filters_for("직업", "레이드", "소울브링어") == Filters(
        "직업", None, "소울브링어"
    )  # stale pick dropped
    assert filters_caption(Filters()) == "모든 공략에서 찾습니다."
    assert filters_caption(Filters("공략", "레이드", "[레이드] 아스라한 : 무의 장막")) == (
        "검색 범위: 공략 › 레이드 › 아스라한 : 무의 장막"
    )
    assert backend_label("openai", "eeve").startswith("openai · OpenAI 호환 서버 (eeve)")


# --- the Streamlit script, run headless ----------------------------------------------------------------------
def _app(monkeypatch, *args: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", [str(PAGE), *args])
    return AppTest.from_file(str(PAGE), default_timeout=60)


def _assistant_texts(at) -> list[str]:
    return [m.markdown[0].value for m in at.chat_message if m.name == "assistant" and len(m.markdown)]


def test_page_answers_with_filters_sources_and_no_info_state(index_dir, monkeypatch):
    at = _app(monkeypatch, "--index-dir", str(index_dir))
    at.run()
    assert not at.exception
    assert at.title[0].value == "던파 공략 챗봇"
    radio = at.sidebar.radio(key="backend")
    assert radio.value == "extractive" and radio.options == [backend_label("extractive")]
    at.sidebar.selectbox(key="category1").set_value("공략").run()
    at.sidebar.selectbox(key="category2").set_value("레기온").run()
    assert at.sidebar.selectbox(key="dungeon:레기온").options == ["전체", "어둑섬"]  # board prefix dropped
    at.sidebar.selectbox(key="dungeon:레기온").set_value("[레기온] 어둑섬").run()
    assert "검색 범위: 공략 › 레기온 › 어둑섬" in [c.value for c in at.sidebar.caption]
    at.chat_input[0].set_value("입장 조건은?").run()
    assert not at.exception
    assert _assistant_texts(at) == [
        "입장 조건은 명성 40000입니다. \\[1\\]"
    ]  # the sentence with its source marker
    assert [e.label for e in at.expander] == ["출처 1건"]
    assert "어둑섬 레기온 기초" in at.expander[0].markdown[0].value
    # Out-of-corpus question: the distinct "no information" state, no sources.
    at.chat_input[0].set_value("오늘 서울 날씨 어때?").run()
    assert any(NO_INFO_ANSWER in i.value for i in at.info)
    assert [e.label for e in at.expander] == ["출처 1건"]  # still only the first answer's sources
    assert len(at.session_state["messages"]) == 4


def test_page_offers_the_configured_backend_beside_extractive(index_dir, monkeypatch):
    from dnfbot.bench.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        at = _app(
            monkeypatch, "--index-dir", str(index_dir), "--backend", "openai", "--model", "fake", "--base-url",
            fake.base_url,
        )  # fmt: skip
        at.run()
        radio = at.sidebar.radio(key="backend")
        assert radio.options == [backend_label("openai", "fake"), backend_label("extractive")]
        assert radio.value == "openai"
        at.chat_input[0].set_value("더스크 피로도 얼마나 들어?").run()
        assert not at.exception
        assert _assistant_texts(at)[-1] == "노블레스 코드 더스크 리뷰 공략에 따르면 이렇게 하시면 됩니다."
        assert any("답변 생성기: openai" in c.value for c in at.caption)
        at.sidebar.radio(key="backend").set_value("extractive").run()
        at.chat_input[0].set_value("더스크 피로도 얼마나 들어?").run()
        assert "30" in _assistant_texts(at)[-1]
        assert len(fake.requests) == 1  # the second answer came from the extractive back end


# --- a real browser ------------------------------------------------------------------------------------------
def _chromium() -> tuple[str, str] | None:
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_page_in_headless_chromium(index_dir, tmp_path):
    found = _chromium()
    if found is None:
        pytest.skip(
            "needs the system chromium + chromedriver (Debian: apt-get install chromium chromium-driver)"
        )
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    cmd = [sys.executable, "-m", "dnfbot", "ui", "--port", str(port), "--index-dir", str(index_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
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
        opts.binary_location = found[0]
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--lang=ko-KR",
        ):
            opts.add_argument(arg)
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=found[1]))
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
        box.send_keys("더스크 피로도 얼마나 들어?")
        box.send_keys(Keys.ENTER)
        answer_xpath = "//*[@data-testid='stChatMessage'][.//*[contains(text(), '고정 피로도 30')]]"
        wait.until(ec.presence_of_element_located((By.XPATH, answer_xpath)))
        expander = wait.until(
            ec.element_to_be_clickable((By.XPATH, "//details//summary[contains(., '출처 1건')]"))
        )
        expander.click()
        wait.until(
            ec.visibility_of_element_located(
                (By.XPATH, "//details//*[contains(., '노블레스 코드 더스크 리뷰')]")
            )
        )
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "던파 공략 챗봇" in body and "답변 생성기: extractive" in body
        # docs/serving-ui.png is refreshed only when asked (DNFBOT_UPDATE_DOCS=1), so test runs leave the tree clean.
        shot = SCREENSHOT if os.environ.get("DNFBOT_UPDATE_DOCS") == "1" else tmp_path / "ui.png"
        if shot == SCREENSHOT:
            time.sleep(1.0)  # let the expander finish its opening animation for the picture
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
