"""Agent-to-agent context hand-off: agent A prefills a long document once and pushes the
compressed cache; agent B, in another process, finds it by the document's token prefix,
pulls it and answers without running any prefill. The answer matches a local run.

    export KVSTACK_TOKEN=$(openssl rand -hex 16)   # a secret of 8+ characters, in every terminal
    # terminal 1: a cache server
    kvstack serve --store ./caches --port 8765
    # terminal 2: agent A prefills an essay and pushes it
    python examples/agents.py prefill --model smollm2-135m --essay founders
    # terminal 3: agent B answers from the pushed cache (no prefill)
    python examples/agents.py answer --model smollm2-135m --essay founders --question "Who should found startups?"
    # everything at once (server, A and B as separate processes, plus a local reference run):
    python examples/agents.py demo --model smollm2-135m --essay founders --question "..."

Each command prints one JSON line. ``--model`` is a bundled name or a local model directory;
``--context-file`` replaces ``--essay`` for any text.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

DEFAULT_RECIPE = "snapkv:0.5 > int4:g32"


def _text(args) -> str:
    if args.context_file:
        with open(args.context_file, encoding="utf-8") as f:
            return f.read()
    from kvstack.eval.texts import essay

    return essay(args.essay)


def _ids(tokenizer, args, question: str = "?"):
    from kvstack.prompting import split_prompt

    return split_prompt(tokenizer, _text(args), question)


def prefill(args) -> dict:
    """Agent A: compress the document (question-agnostic, so any question can reuse it) and push."""
    import kvstack
    from kvstack.transport import push
    from kvstack.zoo import load

    model, tokenizer = load(args.model)
    context_ids, _ = _ids(tokenizer, args)
    start = time.perf_counter()
    cache = kvstack.compress(model, context_ids, args.recipe)
    seconds = time.perf_counter() - start
    info = push(args.server, cache, args.token, tokenizer=tokenizer)
    return {"agent": "A", "key": info["key"], "bytes": info["bytes"], "tokens": info["tokens"],
            "prefill_seconds": round(seconds, 3)}


def answer(args) -> dict:
    """Agent B: tokenize (cheap), find the document's cache by its prefix, pull it, generate."""
    import kvstack
    from kvstack.errors import CacheNotFoundError
    from kvstack.transport import find, pull
    from kvstack.zoo import load

    model, tokenizer = load(args.model)
    context_ids, question_ids = _ids(tokenizer, args, args.question)
    hit = find(args.server, model, context_ids, args.token)
    if hit is None:
        raise CacheNotFoundError("no cache of this document on the server: run `agents.py prefill` first")
    start = time.perf_counter()
    cache = pull(args.server, hit["key"], model, args.token, tokenizer=tokenizer)
    pulled = time.perf_counter() - start
    out = kvstack.generate(model, cache, question_ids, max_new_tokens=args.max_new_tokens)
    return {"agent": "B", "key": hit["key"], "pull_seconds": round(pulled, 3), "answer_ids": out.tolist(),
            "answer": tokenizer.decode(out, skip_special_tokens=True)}


def local(args) -> dict:
    """The reference: one process compresses and answers."""
    import kvstack
    from kvstack.zoo import load

    model, tokenizer = load(args.model)
    context_ids, question_ids = _ids(tokenizer, args, args.question)
    cache = kvstack.compress(model, context_ids, args.recipe)
    out = kvstack.generate(model, cache, question_ids, max_new_tokens=args.max_new_tokens)
    return {"agent": "local", "answer_ids": out.tolist(), "answer": tokenizer.decode(out, skip_special_tokens=True)}


def _run_json(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def demo(args) -> dict:
    """A server, agent A and agent B as three processes, and a local run to compare with."""
    token = args.token or os.urandom(12).hex()
    common = ["--model", args.model, "--token", token, "--recipe", args.recipe]
    common += ["--context-file", args.context_file] if args.context_file else ["--essay", args.essay]
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen([sys.executable, "-m", "kvstack.transport", "serve", "--store", store,
                                   "--port", "0", "--token", token], stdout=subprocess.PIPE, text=True)
        try:
            url = server.stdout.readline().split("listening on ")[1].split()[0]
            me = [sys.executable, __file__]
            a = _run_json([*me, "prefill", "--server", url, *common])
            b = _run_json([*me, "answer", "--server", url, "--question", args.question,
                           "--max-new-tokens", str(args.max_new_tokens), *common])
        finally:
            server.terminate()
            server.wait(10)
    ref = local(args)
    return {"agent": "demo", "A": a, "B": b, "local": ref, "match": b["answer_ids"] == ref["answer_ids"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["prefill", "answer", "local", "demo"])
    ap.add_argument("--model", default="smollm2-135m", help="bundled model name or local model directory")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--essay", default="founders", help="Paul Graham essay name (kvstack.eval.texts)")
    src.add_argument("--context-file", help="a text file to use as the document")
    ap.add_argument("--question", default="What is this text about?")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--server", default=os.environ.get("KVSTACK_SERVER", "http://127.0.0.1:8765"))
    ap.add_argument("--token", default=os.environ.get("KVSTACK_TOKEN"))
    args = ap.parse_args(argv)
    result = {"prefill": prefill, "answer": answer, "local": local, "demo": demo}[args.command](args)
    print(json.dumps(result))
    return 0 if result.get("match", True) else 1


if __name__ == "__main__":
    sys.exit(main())
