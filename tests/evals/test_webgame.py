"""The loopback web UI of the top-1 game, driven in headless Chromium (the system browser,
never a download) through Playwright; the page state is asserted and a screenshot saved."""

import math
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


@pytest.fixture(scope="module")
def questions(docs):
    toks = docs["d0"]
    # three comparisons; the sample " dog"(3290) against each true token, the last one the
    # true token itself (the "same token" case recorded at 50%)
    out = [ev.PairQuestion(i, "d0", i + 1, tuple(toks[: i + 1]), toks[i + 1], (3290,), -1.0 - i,
                           (-3.0,)) for i in range(2)]  # fmt: skip
    out.append(ev.PairQuestion(2, "d0", 3, tuple(toks[:3]), toks[3], (toks[3],), -0.5, (-0.5,)))
    return out


def test_pair_api_and_bad_input(tmp_path, vocab, docs, questions):
    from starlette.testclient import TestClient

    log = tmp_path / "pair.jsonl"
    client = TestClient(make_game_app(docs, vocab, log, questions=questions, n_training=1))
    assert "Which token came next" in client.get("/pair").text
    s = client.post("/api/pair/state", json={"player": "bo"}).json()
    assert s["training"] and s["index"] == 0 and s["total"] == 3
    assert {s["a"], s["b"]} == {"'␣cat'", "'␣dog'"}
    r = client.post("/api/pair/answer", json={"player": "bo", "choice": 0.55})
    assert r.status_code == 400 and "one of 99%" in r.json()["error"]
    a_true = s["a"] == "'␣cat'"
    r = client.post("/api/pair/answer", json={"player": "bo", "choice": 0.9}).json()
    assert r["a_is_true"] == a_true and r["training"]
    assert r["g"] == pytest.approx(0.9 if a_true else 0.1)
    assert r["state"]["total_score"] == 0.0  # training answers are not counted
    a_true2 = r["state"]["a"] == "'␣sat'"
    choice = 0.99 if a_true2 else 0.01
    r = client.post("/api/pair/answer", json={"player": "bo", "choice": choice})
    s2 = r.json()["state"]
    assert not r.json()["training"] and s2["auto"]
    assert s2["total_score"] == pytest.approx(ev.pair_score(0.99, math.exp(-2.0)))
    # a new app over the same log resumes where the player stopped
    client2 = TestClient(make_game_app(docs, vocab, log, questions=questions, n_training=1))
    assert client2.post("/api/pair/state", json={"player": "bo"}).json()["index"] == 2
    r = client2.post("/api/pair/answer", json={"player": "bo", "choice": None}).json()
    assert r["g"] == 0.5 and r["state"]["done"]
    r = client2.post("/api/pair/answer", json={"player": "bo", "choice": 0.5})
    assert r.status_code == 400 and "answered every question" in r.json()["error"]
    no_pair = TestClient(make_game_app(docs, vocab, tmp_path / "x.jsonl"))
    assert no_pair.post("/api/pair/state", json={"player": "bo"}).status_code == 404


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
def server(tmp_path, vocab, docs, questions):
    import uvicorn

    log = tmp_path / "web.jsonl"
    port = _free_port()
    app = make_game_app(docs, vocab, log, questions=questions, n_training=1)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", log
    srv.should_exit = True
    thread.join(10)


def _playwright():
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        print(f"SKIP reason: no system Chromium at {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"no system Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("SKIP reason: the playwright package is not installed (root dev group)")
        pytest.skip("playwright is not installed")
    return sync_playwright


def test_pair_page_in_headless_chromium(server, tmp_path):
    sync_playwright = _playwright()
    url, log = server
    score = "document.getElementById('score').textContent"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(url + "pair")
            page.fill("#name", "web-bo")
            page.click("#start")
            page.wait_for_selector("#game:not([hidden])")
            assert page.text_content("#progress") == "training 1/3"
            assert page.text_content("#prefix") == "The"
            assert {page.text_content("#a"), page.text_content("#b")} == {"'␣cat'", "'␣dog'"}
            assert len(page.query_selector_all("#buttons button")) == 11
            page.click("#c50")  # training: 50% scores 0 and is not counted
            page.wait_for_function("document.getElementById('progress').textContent"
                                   " === 'scored 2/3'")  # fmt: skip
            assert "training, not counted" in page.text_content("#reveal")
            assert page.text_content("#score") == "0.0"
            a_true = page.text_content("#a") == "'␣sat'"
            page.click("#c99" if a_true else "#c1")  # sure, and right
            page.wait_for_function(f"{score} !== '0.0'")
            assert page.get_attribute("#reveal", "class") == "plus"
            assert page.text_content("#score") == "92.4"  # 1000 e^-2 (ln .99 - ln .5)
            page.wait_for_selector("#same:not([hidden])")  # both candidates are ' on'
            assert page.is_hidden("#buttons")
            shot = tmp_path / "pairgame.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
            page.click("#next")
            page.wait_for_selector("#finished:not([hidden])")
            assert page.text_content("#final") == "92.4"
            print(f"\nscreenshot: {shot}")
        finally:
            browser.close()
    records, _ = ev.read_log(log)
    assert [r["choice"] for r in records][::2] == [0.5, 0.5]  # the training 50% and the auto 50%
    assert [r["training"] for r in records] == [True, False, False]
    assert records[2]["auto"] and records[1]["g"] == pytest.approx(0.99)


def test_page_in_headless_chromium(server, vocab, docs, tmp_path):
    sync_playwright = _playwright()
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
