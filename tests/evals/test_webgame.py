"""The loopback web UI of the top-1 game, driven in headless Chromium (the system browser,
never a download) through Playwright; the page state is asserted and a screenshot saved."""

import os
import shutil
import socket
import threading
import time

import pytest

import respax.evals as ev
from respax.evals._webgame import make_game_app, serve_game

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def vocab():
    return ev.GPT2Vocab()


@pytest.fixture(scope="module")
def docs(vocab):
    return {"d0": vocab.tokenizer.encode("The cat sat on the mat. Then it slept all day.")}


def test_api_and_bad_input(tmp_path, vocab, docs):
    from starlette.testclient import TestClient

    client = TestClient(make_game_app(docs, vocab, tmp_path / "log.jsonl"))
    assert "Which token comes next" in client.get("/").text
    r = client.post("/api/state", json={"player": ""})
    assert r.status_code == 400 and "enter a name" in r.json()["error"]
    r = client.post("/api/guess", json={"player": "ann", "text": "the cat"})
    assert r.status_code == 400 and "not one GPT-2 token" in r.json()["error"]
    r = client.post("/api/guess", json={"player": "ann", "text": ""})
    assert r.status_code == 400 and "empty input" in r.json()["error"]
    assert client.post("/api/guess", content=b"{not json").status_code == 400
    r = client.post("/api/guess", json={"player": "ann", "text": " cat"}).json()
    assert r["correct"] and r["state"]["guesses"] == 1
    with pytest.raises(ValueError, match="loopback"):
        serve_game(None, host="0.0.0.0")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, vocab, docs):
    import uvicorn

    log = tmp_path / "web.jsonl"
    port = _free_port()
    config = uvicorn.Config(make_game_app(docs, vocab, log), host="127.0.0.1", port=port,
                            log_level="warning")  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", log
    srv.should_exit = True
    thread.join(10)


def test_page_in_headless_chromium(server, vocab, docs, tmp_path):
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        print(f"SKIP reason: no system Chromium at {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"no system Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("SKIP reason: the playwright package is not installed (root dev group)")
        pytest.skip("playwright is not installed")
    url, log = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#name", "web-ann")
            page.click("#start")
            page.wait_for_selector("#game:not([hidden])")
            assert page.text_content("#score") == "0/0"
            assert page.text_content("#prefix") == "The"
            page.fill("#guess", "␣cat")  # the visible-space form a person may type
            page.click("#send")
            page.wait_for_function("document.getElementById('score').textContent === '1/1'")
            assert page.get_attribute("#reveal", "class") == "right"
            assert page.text_content("#prefix") == "The cat"
            page.fill("#guess", " dog")
            page.click("#send")
            page.wait_for_function("document.getElementById('score').textContent === '1/2'")
            assert page.get_attribute("#reveal", "class") == "wrong"
            assert "'␣sat'" in page.text_content("#reveal")
            page.fill("#guess", "sat on")
            page.click("#send")
            page.wait_for_function("document.getElementById('error').textContent !== ''")
            assert "not one GPT-2 token" in page.text_content("#error")
            assert page.text_content("#score") == "1/2"
            shot = tmp_path / "webgame.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
            print(f"\nscreenshot: {shot}")
        finally:
            browser.close()
    records, _ = ev.read_log(log)
    assert [r["correct"] for r in records] == [True, False]
    assert [r["target"] for r in records] == [" cat", " sat"]
