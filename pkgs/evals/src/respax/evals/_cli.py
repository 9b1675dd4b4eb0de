"""`respax-evals run` and `respax-evals serve` (also `python -m respax.evals`)."""

import argparse
import sys

__all__ = ["main", "make_model"]


def make_model(spec: str):
    """A backend from a spec: `local:<dir>` (a GPT-2-family checkpoint folder),
    `openai:<url>` / `openai-chat:<url>` (an OpenAI-compatible server), `ngram:<order>` (trained
    on the shipped corpus)."""
    kind, _, arg = spec.partition(":")
    if kind == "local" and arg:
        from ._jax_lm import JaxLM

        return JaxLM.from_pretrained(arg)
    if kind in ("openai", "openai-chat") and arg:
        from ._http import OpenAILM

        return OpenAILM(arg, mode="chat" if kind == "openai-chat" else "completions")
    if kind == "ngram":
        from ._corpus import load_corpus
        from ._ngram import NGramLM

        return NGramLM.fit(load_corpus("train").splitlines(), order=int(arg or 5))
    raise ValueError(
        f"unknown --model {spec!r}; use local:<dir>, openai:<url>, openai-chat:<url> or "
        "ngram:<order>."
    )


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="respax-evals")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="evaluate a model on a task")
    run.add_argument("--task", required=True, action="append", help="e.g. persona/<name>")
    run.add_argument("--model", required=True)
    run.add_argument("--data", default=None, help="anthropics/evals folder (default: env)")
    run.add_argument("--template", default="human_assistant@1")
    run.add_argument("--limit", type=int, default=None)
    run.add_argument("--out", default="results/respax-evals")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--inspect",
        action="store_true",
        help="also write an Inspect JSON log per task under OUT/logs",
    )
    serve = sub.add_parser("serve", help="serve a model as an OpenAI-compatible server")
    serve.add_argument("--model", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        lm = make_model(args.model)
        if args.command == "serve":
            from ._server import serve as _serve

            _serve(lm, args.host, args.port)
            return 0
        import jax

        from ._datasets import load_task
        from ._runner import evaluate, evaluate_winogenerated, write_results

        results = []
        for name in args.task:
            task = load_task(name, args.data)
            for e in task.errors:
                print(f"skipped {e}", file=sys.stderr)
            if task.family == "winogenerated":
                r = evaluate_winogenerated(lm, task, limit=args.limit)
                print(f"{name}: r = {r.pearson_r:.3f} [{r.ci_lower:.3f}, {r.ci_upper:.3f}]")
            else:
                r = evaluate(
                    lm, task, args.template, key=jax.random.key(args.seed), limit=args.limit
                )
                print(
                    f"{name}: matching {r.matching_rate:.3f} [{r.ci_lower:.3f}, {r.ci_upper:.3f}]"
                    f" n={r.n}"
                )
                if args.inspect:
                    from ._inspect import write_inspect_log

                    safe = name.replace("/", "__")
                    print(write_inspect_log(r, f"{args.out}/logs/{safe}.json", model=args.model))
            results.append(r)
        print(write_results(results, args.out, model=args.model))
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"respax-evals: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
