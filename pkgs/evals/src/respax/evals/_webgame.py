"""A small local web UI of both games (Starlette, served on loopback only).

    python -m respax.evals._webgame --log games.jsonl [--port 8765]

then open http://127.0.0.1:8765/ (top-1 game) or http://127.0.0.1:8765/pair (perplexity game).
The top-1 page asks for a name, shows the prefix, takes a typed token (a leading space shown as
␣; typing ␣ or a space both work), reveals the true token in green (right) or pink (wrong) and
keeps the running score. The perplexity page shows the prefix and two candidates A and B (the
true next token and a generator sample), takes one of the paper's 11 confidence buttons ("A is
the original" from 99% to 1%), reveals which was the original and the answer's score
1000 p_gen(t*) (ln g - ln 0.5), with 10 training comparisons first. The game state lives in
`TopOneGame` / `PairGame` objects over the append-only log, so reloading the page or restarting
the server resumes. Needs the `[http]` extra (starlette, uvicorn).
"""

import argparse
import html
import os
import threading
from collections.abc import Mapping, Sequence

from ._bpe import GPT2Vocab, show_token
from ._game import PAIR_BUTTONS, PairGame, PairQuestion, TopOneGame

__all__ = ["make_game_app", "serve_game"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

# the pages' JSON POST helper (errors come back as {"error": message})
_CALL_JS = """async function call(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify(body)});
  const j = await r.json(); if (!r.ok) throw new Error(j.error); return j; }"""

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
<p><a href="/pair">The perplexity game</a></p>
<script>
let player = "";
const $ = (id) => document.getElementById(id);
function show(s) { $("player").textContent = player;
  $("score").textContent = s.correct + "/" + s.guesses;
  $("prefix").textContent = s.prefix; }
CALL_JS
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
""".replace("CALL_JS", _CALL_JS)


_PAIR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Perplexity game</title>
<style>
body{font-family:sans-serif;max-width:50em;margin:2em auto}
#prefix{white-space:pre-wrap;border:1px solid #ccc;padding:1em;min-height:4em}
.cand{font-size:1.3em;margin:0 1em}.sp{color:#999}
#buttons button{min-width:3.5em;margin:.1em}
#reveal{padding:.3em;margin:.5em 0}.plus{background:#b7f0b1}.minus{background:#f7c1d9}
</style></head><body>
<h1>Which token came next in the real text?</h1>
<p>Two candidates, A and B: one is the original next token, the other a language model's
sample. Click how confident you are that <b>A</b> is the original.</p>
<div id="login"><label>Name <input id="name"></label> <button id="start">Start</button></div>
<div id="game" hidden>
<p>Player <b id="player"></b> · <span id="progress"></span> · score <span id="score">0.0</span></p>
<div id="prefix"></div>
<p>A: <span class="cand" id="a"></span> B: <span class="cand" id="b"></span></p>
<div id="buttons">BUTTONS</div>
<div id="same" hidden><button id="next">Same token: record 50% and go on</button></div>
<div id="reveal"></div><div id="error" style="color:#b00"></div>
</div>
<div id="finished" hidden><p>Finished: total score <b id="final"></b>. Thank you!</p></div>
<p><a href="/">The top-1 game</a></p>
<script>
let player = "";
const $ = (id) => document.getElementById(id);
function show(s) { $("player").textContent = player;
  $("score").textContent = s.total_score.toFixed(1);
  if (s.done) { $("game").hidden = true; $("finished").hidden = false;
                $("final").textContent = s.total_score.toFixed(1); return; }
  const kind = s.training ? "training " : "scored ";
  $("progress").textContent = kind + (s.index + 1) + "/" + s.total;
  $("prefix").textContent = s.prefix; $("a").textContent = s.a; $("b").textContent = s.b;
  $("buttons").hidden = s.auto; $("same").hidden = !s.auto; }
CALL_JS
$("start").onclick = async () => { player = $("name").value.trim();
  try { show(await call("/api/pair/state", {player})); $("login").hidden = true;
        if (!$("finished").hidden) return; $("game").hidden = false; }
  catch (e) { $("error").textContent = e.message; } };
async function answer(choice) {
  try { const j = await call("/api/pair/answer", {player, choice}); $("error").textContent = "";
    $("reveal").className = j.score >= 0 ? "plus" : "minus";
    $("reveal").textContent = "The original was " + (j.a_is_true ? "A" : "B") +
      ". This answer: " + (j.score >= 0 ? "+" : "") + j.score.toFixed(1) +
      (j.training ? " (training, not counted)" : "");
    show(j.state); }
  catch (e) { $("error").textContent = e.message; } }
for (const b of document.querySelectorAll("#buttons button"))
  b.onclick = () => answer(parseFloat(b.dataset.choice));
$("next").onclick = () => answer(null);
</script></body></html>
""".replace("CALL_JS", _CALL_JS).replace(
    "BUTTONS",
    "".join(
        f'<button id="c{round(b * 100)}" data-choice="{b}">{round(b * 100)}%</button>'
        for b in PAIR_BUTTONS
    ),
)


def make_game_app(
    docs: Mapping[str, Sequence[int]],
    vocab: GPT2Vocab,
    log_path: str | os.PathLike,
    seed: int = 0,
    *,
    questions: Sequence[PairQuestion] | None = None,
    n_training: int = 10,
):
    """The Starlette app of the web games over `docs` (top-1) and `questions` (perplexity game,
    with `n_training` training comparisons first), logging to `log_path`.

    Routes: `GET /` the top-1 page; `POST /api/state {player}`, `POST /api/guess {player, text}`,
    `POST /api/new {player}`; with `questions`, `GET /pair` the perplexity page,
    `POST /api/pair/state {player}` and `POST /api/pair/answer {player, choice}` (`choice` one
    of `PAIR_BUTTONS`, or null when both candidates are the same token). JSON throughout; errors
    are `{"error": message}` with status 400 (404 for the perplexity routes without questions).

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
    pair_games: dict[str, PairGame] = {}
    lock = threading.Lock()
    if questions is not None:
        # validated once here, so a bad question list fails at start-up, not at the first player
        PairGame(questions, vocab, log_path, "check", n_training=n_training, seed=seed)

    def player_of(body) -> str:
        player = body.get("player") if isinstance(body, dict) else None
        if not isinstance(player, str) or not player.strip():
            raise ValueError("enter a name to play (it lets you resume later).")
        return player.strip()

    def game_for(body) -> TopOneGame:
        player = player_of(body)
        if player not in games:
            games[player] = TopOneGame(docs, vocab, log_path, player, seed=seed)
        return games[player]

    def pair_for(body) -> PairGame:
        player = player_of(body)
        if player not in pair_games:
            pair_games[player] = PairGame(
                questions, vocab, log_path, player, n_training=n_training, seed=seed
            )
        return pair_games[player]

    def state(game):
        p = game.current()
        return {"prefix": p.prefix_text, "guesses": p.guesses, "correct": p.correct,
                "doc_id": p.doc_id, "position": p.position}  # fmt: skip

    def pair_state(game: PairGame):
        if game.done:
            return {"done": True, "total_score": game.total_score}
        p = game.current()
        return {"done": False, "index": p.index, "total": p.total, "training": p.training,
                "prefix": p.prefix_text, "a": show_token(p.a_text), "b": show_token(p.b_text),
                "auto": p.auto, "total_score": game.total_score}  # fmt: skip

    async def handle(request, fn, needs_questions=False):
        """`fn(body) -> dict` under the lock; a ValueError becomes a 400 with its message."""
        if needs_questions and questions is None:
            return JSONResponse(
                {"error": "this server has no perplexity-game questions "
                          "(make_game_app(questions=))"},
                status_code=404,
            )  # fmt: skip
        try:
            body = await request.json()
        except ValueError:
            body = None
        with lock:
            try:
                return JSONResponse(fn(body))
            except ValueError as e:
                return JSONResponse({"error": str(e)}, status_code=400)

    def guess(body):
        game = game_for(body)
        text = body.get("text")
        if not isinstance(text, str):
            raise ValueError("`text` must be the typed token.")
        fb = game.guess(text)
        return {"correct": fb.correct, "target": fb.target_text,
                "target_shown": show_token(fb.target_text), "state": state(game)}  # fmt: skip

    def new_document(body):
        game = game_for(body)
        game.new_document()
        return state(game)

    def answer(body):
        game = pair_for(body)
        if game.done:
            raise ValueError(f"{game.player} has answered every question.")
        training = game.current().training
        fb = game.answer(body.get("choice"))
        return {"a_is_true": fb.a_is_true, "g": fb.g, "score": fb.score,
                "training": training, "state": pair_state(game)}  # fmt: skip

    async def page(request):
        return HTMLResponse(_PAGE)

    async def pair_page(request):
        if questions is None:
            return await handle(request, None, needs_questions=True)
        return HTMLResponse(_PAIR_PAGE)

    async def api_state(request):
        return await handle(request, lambda body: state(game_for(body)))

    async def api_guess(request):
        return await handle(request, guess)

    async def api_new(request):
        return await handle(request, new_document)

    async def api_pair_state(request):
        return await handle(request, lambda body: pair_state(pair_for(body)), True)

    async def api_pair_answer(request):
        return await handle(request, answer, True)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/state", api_state, methods=["POST"]),
            Route("/api/guess", api_guess, methods=["POST"]),
            Route("/api/new", api_new, methods=["POST"]),
            Route("/pair", pair_page),
            Route("/api/pair/state", api_pair_state, methods=["POST"]),
            Route("/api/pair/answer", api_pair_answer, methods=["POST"]),
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
    from ._tui import corpus_docs, pair_questions

    ap = argparse.ArgumentParser(
        prog="python -m respax.evals._webgame",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--log", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", type=int, default=90, help="pair: 10 training + 80 scored")
    ap.add_argument("--training", type=int, default=10)
    ap.add_argument("--order", type=int, default=3, help="pair: the n-gram generator's order")
    ap.add_argument("--samples", type=int, default=400)
    a = ap.parse_args(argv)
    vocab = GPT2Vocab()
    docs = corpus_docs(vocab)
    qs = pair_questions(vocab, docs, a.questions, a.order, a.samples, a.seed)
    app = make_game_app(docs, vocab, a.log, a.seed, questions=qs, n_training=a.training)
    print(f"serving on http://{html.escape(a.host)}:{a.port}/ and /pair", flush=True)
    serve_game(app, a.host, a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
