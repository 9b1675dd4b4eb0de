"""A small local web UI of the top-1 game (Starlette, served on loopback only).

    python -m respax.evals._webgame --log games.jsonl [--port 8765]

then open http://127.0.0.1:8765/. The page asks for a name, shows the prefix, takes a typed token
(a leading space shown as ␣; typing ␣ or a space both work), reveals the true token in green
(right) or pink (wrong) and keeps the running score. The game state lives in `TopOneGame`
objects over the append-only log, so reloading the page or restarting the server resumes.
Needs the `[http]` extra (starlette, uvicorn).
"""

import argparse
import html
import os
import threading
from collections.abc import Mapping, Sequence

from ._bpe import GPT2Vocab, show_token
from ._game import TopOneGame

__all__ = ["make_game_app", "serve_game"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Next-token game</title>
<style>
body{font-family:sans-serif;max-width:50em;margin:2em auto}
#prefix{white-space:pre-wrap;border:1px solid #ccc;padding:1em;min-height:4em}
.right{background:#b7f0b1}.wrong{background:#f7c1d9}.sp{color:#999}
#reveal{padding:.3em;margin:.5em 0}
</style></head><body>
<h1>Which token comes next?</h1>
<p>Type exactly one GPT-2 token, with its leading space (a space or ␣).</p>
<div id="login"><label>Name <input id="name"></label> <button id="start">Start</button></div>
<div id="game" hidden>
<p>Player <b id="player"></b>: score <span id="score">0/0</span></p>
<div id="prefix"></div>
<form id="form"><input id="guess" autocomplete="off" size="30">
<button id="send" type="submit">Guess</button>
<button id="newdoc" type="button">New document</button></form>
<div id="reveal"></div><div id="error" style="color:#b00"></div>
</div>
<script>
let player = "";
const $ = (id) => document.getElementById(id);
function show(s) { $("player").textContent = player;
  $("score").textContent = s.correct + "/" + s.guesses;
  $("prefix").textContent = s.prefix; }
async function call(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify(body)});
  const j = await r.json(); if (!r.ok) throw new Error(j.error); return j; }
$("start").onclick = async () => { player = $("name").value.trim();
  try { show(await call("/api/state", {player})); $("login").hidden = true;
        $("game").hidden = false; $("guess").focus(); }
  catch (e) { $("error").textContent = e.message; } };
$("form").onsubmit = async (ev) => { ev.preventDefault();
  const text = $("guess").value.replaceAll("\u2423", " ");
  try { const j = await call("/api/guess", {player, text}); $("error").textContent = "";
    $("reveal").className = j.correct ? "right" : "wrong";
    $("reveal").textContent = (j.correct ? "Right: " : "Wrong: the token was ") + j.target_shown;
    $("guess").value = ""; show(j.state); }
  catch (e) { $("error").textContent = e.message; } };
$("newdoc").onclick = async () => { show(await call("/api/new", {player})); };
</script></body></html>
"""


def make_game_app(
    docs: Mapping[str, Sequence[int]],
    vocab: GPT2Vocab,
    log_path: str | os.PathLike,
    seed: int = 0,
):
    """The Starlette app of the top-1 web game over `docs`, logging to `log_path`.

    Routes: `GET /` the page; `POST /api/state {player}`, `POST /api/guess {player, text}`,
    `POST /api/new {player}` (JSON; errors are `{"error": message}` with status 400).

    Example:
        >>> import tempfile, pathlib
        >>> from starlette.testclient import TestClient
        >>> vocab = GPT2Vocab()
        >>> app = make_game_app({"d": [15496, 995]}, vocab,
        ...                     pathlib.Path(tempfile.mkdtemp()) / "log.jsonl")
        >>> client = TestClient(app)
        >>> client.post("/api/state", json={"player": "ann"}).json()["prefix"]
        'Hello'
        >>> r = client.post("/api/guess", json={"player": "ann", "text": " world"}).json()
        >>> r["correct"], r["state"]["correct"]
        (True, 1)
    """
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    games: dict[str, TopOneGame] = {}
    lock = threading.Lock()

    def game_for(body) -> TopOneGame:
        player = body.get("player") if isinstance(body, dict) else None
        if not isinstance(player, str) or not player.strip():
            raise ValueError("enter a name to play (it lets you resume later).")
        player = player.strip()
        if player not in games:
            games[player] = TopOneGame(docs, vocab, log_path, player, seed=seed)
        return games[player]

    def state(game):
        p = game.current()
        return {"prefix": p.prefix_text, "guesses": p.guesses, "correct": p.correct,
                "doc_id": p.doc_id, "position": p.position}  # fmt: skip

    async def read(request):
        try:
            return await request.json()
        except ValueError:
            return None

    async def api_state(request):
        body = await read(request)
        with lock:
            try:
                return JSONResponse(state(game_for(body)))
            except ValueError as e:
                return JSONResponse({"error": str(e)}, status_code=400)

    async def api_guess(request):
        body = await read(request)
        with lock:
            try:
                game = game_for(body)
                text = body.get("text")
                if not isinstance(text, str):
                    raise ValueError("`text` must be the typed token.")
                fb = game.guess(text)
            except ValueError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            return JSONResponse(
                {
                    "correct": fb.correct,
                    "target": fb.target_text,
                    "target_shown": show_token(fb.target_text),
                    "state": state(game),
                }
            )

    async def api_new(request):
        body = await read(request)
        with lock:
            try:
                game = game_for(body)
            except ValueError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            game.new_document()
            return JSONResponse(state(game))

    async def page(request):
        return HTMLResponse(_PAGE)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/state", api_state, methods=["POST"]),
            Route("/api/guess", api_guess, methods=["POST"]),
            Route("/api/new", api_new, methods=["POST"]),
        ]
    )


def serve_game(app, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve `app` with uvicorn on a loopback address (other hosts are refused: the game has no
    authentication)."""
    if host not in _LOOPBACK:
        raise ValueError(f"`host` must be a loopback address {_LOOPBACK}, got {host!r}.")
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(argv=None) -> int:
    from ._tui import corpus_docs

    ap = argparse.ArgumentParser(prog="python -m respax.evals._webgame", description=__doc__)
    ap.add_argument("--log", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    vocab = GPT2Vocab()
    print(f"serving on http://{html.escape(a.host)}:{a.port}/", flush=True)
    serve_game(make_game_app(corpus_docs(vocab), vocab, a.log, a.seed), a.host, a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
