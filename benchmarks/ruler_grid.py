"""Run a RULER grid as many `kvstack eval` processes sharing one GPU, most important cells first (issue 17).

One `kvstack eval` process decodes one sample at a time, so a 135M-270M model leaves a GPU mostly
idle; this keeps ``--procs`` of them busy from a queue of jobs (task x length x a few recipes;
each job shares one prefill per sample across its recipes). Jobs run in plan order, so if the
``--deadline`` cuts the run, the cells that matter most are finished. Rows go to
``OUT/rows.jsonl`` (merged every few seconds, so a killed run keeps what it finished); the table
printed at the end gives, per task and length, each recipe's right answers, its ratio below bf16
(= fp16: real bytes) and its share of the full cache's score.

    python benchmarks/ruler_grid.py --plan smollm2 --seed 4 --device cuda --procs 12 --out /tmp/grid
    python benchmarks/ruler_grid.py --plan smollm2 --seed 4 --samples 2 --lengths 1k --procs 2 --out /tmp/g

Plans: ``smollm2`` / ``gemma`` (the third session's runs, seed 4), ``smollm2-s5`` / ``gemma-s5`` (the fourth
session's held-out candidates: `back=8` presets, int4 fidelity checks; seed 5 - run on the CPU that session, as
no GPU could be started), ``smollm2-s7`` / ``gemma-s7`` (the fifth session's fresh set: presets and candidates
fixed on the tuning seeds, 4k and 8k, Gemma also 16k), ``smollm2-s8`` / ``gemma-s8`` (the sixth session's headline
on a fresh set, seed 8: the presets as they are, default int4, KVzip beside). Reruns resume (finished cells are
skipped by `kvstack eval`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from kvstack.eval.report import summarize
from kvstack.grammar.presets import INT4, K4V2, K4V3, PRESETS

# Recipes below are written out (not preset names) so rows say what ran; `INT4` = `int4:g64`, the default int4 until
# the fifth session (groups of 64 tokens; the presets keep it), `"int4"` alone is today's default (groups of 32).
PLANS = ("smollm2", "gemma", "smollm2-s5", "gemma-s5", "smollm2-s7", "gemma-s7", "smollm2-s8", "gemma-s8")
SINGLE, MULTI = "ruler_niah_single_2", "ruler_niah_multikey_1"
BOTH = [(t, L) for L in ("4k", "8k") for t in (SINGLE, MULTI)]  # the two needle tasks at 4k and 8k
OTHER_TASKS = ("ruler_niah_single_1", "ruler_niah_single_3", "ruler_niah_multikey_2", "ruler_niah_multikey_3",
               "ruler_niah_multivalue", "ruler_niah_multiquery", "ruler_vt", "ruler_cwe", "ruler_fwe", "ruler_qa_1")


@dataclass(frozen=True)
class Job:
    """One ``kvstack eval`` process: a task at a length with a few recipes (one prefill per sample)."""

    task: str
    length: str
    recipes: list[str]
    dtype: str | None = None  # None: the run's --dtype


# What the Gemma run of 2026-12-07 ran (benchmarks/reports/ruler_gemma3/gpu_seed4.jsonl.xz), written out so the
# command reproduces it after the presets moved: the presets of that day, and 8x/4x candidates fixed before it.
GEMMA_CORE = ["identity", INT4, f"surprisal:0.27,span=16 > {K4V2}", f"q2c:0.125,span=16 > {INT4}"]
GEMMA_MORE = [f"surprisal:0.13,span=16 > {K4V2}", f"q2c:0.13,span=16 > {K4V2}", f"surprisal:0.42,span=16 > {INT4}",
              f"q2c:0.42,span=16 > {INT4}", K4V3]


# The fourth session's held-out run (fresh seed 5): question-agnostic candidates that also keep the 8 tokens before
# each well-scored one (`back=8`: a needle's key precedes its value; fixed on tuning seed 1), next to the presets.
BACK = "span=16,back=8,window=128,agg=mean,clip=6,union=1"
B8, B16, B32 = f"surprisal:0.4,{BACK} > {INT4}", f"surprisal:0.27,{BACK} > {K4V2}", f"surprisal:0.13,{BACK} > {K4V2}"
QA16, QA32 = f"q2c:0.125,span=16 > {INT4}", f"q2c:0.13,span=16 > {K4V2}"
INT_CANDIDATES = ["int4:g32", "int8:vbits=4"]  # finer key groups (3.2x) and 8-bit keys (2.5x): is int4's loss fidelity?

# The fifth session's fresh set (seed 7; its 4k cells ran on the CPU that session, no GPU came): the presets
# (`back=8`), today's default int4 (groups of 32) beside the old one, and the candidates fixed on the tuning seeds -
# `back=4`, and question-aware recipes that spend the bytes qa:16x leaves unused (26.9x where 16x is asked).
BACK4 = BACK.replace("back=8", "back=4")
B8_4, B16_4, B32_4 = (f"surprisal:0.4,{BACK4} > {INT4}", f"surprisal:0.27,{BACK4} > {K4V2}",
                      f"surprisal:0.13,{BACK4} > {K4V2}")
QA16_MORE, QA16_K8, QA32_K4 = (f"q2c:0.2,span=16 > {INT4}", "q2c:0.15,span=16 > int8:vbits=4",
                               f"q2c:0.1,span=16 > {INT4}")  # 16.8x, 16.4x, 33.2x below bf16 (one 4k sample)
# KVzip (context reconstruction, question-agnostic; never run on a real model): its extra pass took ~3.5 min per 4k
# sample on this project's CPU, so it waits for a GPU.
KVZIP = [f"kvzip:0.27,span=16 > {K4V2}", f"kvzip:0.13,span=16 > {K4V2}"]


def _p(name: str) -> str:
    return PRESETS[name].recipe


def plan(name: str) -> list[Job]:
    """Jobs in priority order (two recipes a job share a prefill). Recipes are written out, not preset names, so
    rows say what ran even after a preset is re-pointed. A job with a dtype of its own checks that bf16 weights
    are exact enough (the fp32 full cache on the same samples)."""
    if name == "smollm2":  # the presets as they are now, the question-agnostic ones first
        jobs = [Job(t, L, ["identity", _p("best:16x")]) for t, L in BOTH]
        jobs += [Job(t, L, [_p("best:32x"), INT4]) for t, L in BOTH]
        jobs += [Job(t, "4k", [_p("best:8x"), _p("qa:8x")]) for t in (SINGLE, MULTI)]
        jobs += [Job(t, "4k", [_p("qa:4x")]) for t in (SINGLE, MULTI)]
        jobs += [Job(t, L, [_p("best:4x"), _p("qa:16x")]) for t, L in BOTH]
        jobs += [Job(t, L, [_p("qa:32x"), _p("best:8x")]) for t, L in BOTH if L == "8k"]
        jobs += [Job(t, "4k", ["identity", INT4, _p("best:16x"), _p("qa:16x")]) for t in OTHER_TASKS]
        return jobs
    if name == "gemma":
        jobs = [Job(t, L, GEMMA_CORE) for L in ("4k", "8k", "16k") for t in (SINGLE, MULTI)]
        jobs += [Job(t, "4k", GEMMA_MORE) for t in (SINGLE, MULTI)]
        jobs += [Job(t, "4k", ["identity"], "float32") for t in (SINGLE, MULTI)]
        return jobs
    if name == "smollm2-s5":
        pairs = [["identity", B16], [INT4, QA16], [B8, B32], [K4V3, QA32], INT_CANDIDATES]
        jobs = [Job(t, L, recipes) for recipes in pairs for t, L in BOTH]
        qa = [f"q2c:0.42,span=16 > {INT4}", f"q2c:0.8,span=16 > {INT4}"]
        return jobs + [Job(t, "4k", qa) for t in (SINGLE, MULTI)]
    if name == "gemma-s5":
        jobs = [Job(t, L, recipes) for recipes in (["identity", B16], [INT4, QA16], INT_CANDIDATES, [K4V3, B8])
                for t, L in BOTH]
        return jobs + [Job(t, "16k", ["identity", INT4, B16, QA16]) for t in (SINGLE, MULTI)]
    if name in ("smollm2-s7", "gemma-s7"):
        pairs = [["identity", B16], ["int4", QA16], [B32, QA32], [INT4, B8], [B16_4, K4V3], [QA16_MORE, QA16_K8],
                 [B32_4, QA32_K4], KVZIP]
        jobs = [Job(t, L, recipes) for recipes in pairs for t, L in BOTH]
        if name == "gemma-s7":  # Gemma's window is 32k: the presets at 16k too
            jobs[8:8] = [Job(t, "16k", r) for r in (["identity", B16], ["int4", QA16]) for t in (SINGLE, MULTI)]
        return jobs
    if name in ("smollm2-s8", "gemma-s8"):  # the headline on a fresh set (seed 8): today's presets, KVzip beside
        pairs = [["identity", "int4"], [_p("best:16x"), _p("qa:16x")], [_p("best:32x"), _p("qa:32x")], KVZIP,
                 [_p("best:4x"), INT4], [_p("best:8x"), _p("qa:8x")]]
        jobs = [Job(t, L, recipes) for recipes in pairs for t, L in BOTH]
        if name == "gemma-s8":
            jobs[8:8] = [Job(t, "16k", r) for r in pairs[:2] for t in (SINGLE, MULTI)]
        return jobs
    raise SystemExit(f"unknown plan {name!r}: {', '.join(PLANS)}")


def split(jobs: list[Job], per_job: int) -> list[Job]:
    """Cut each job's recipes into groups of ``per_job`` so the queue balances across processes."""
    return [replace(j, recipes=j.recipes[i:i + per_job]) for j in jobs for i in range(0, len(j.recipes), per_job)]


def eval_command(args: argparse.Namespace, job: Job, out: Path) -> list[str]:
    """One ``kvstack eval`` process; single-answer needle tasks decode ``--max-new-tokens``, the others their own
    answer length (multi-value, word lists and variable chains need more)."""
    new_tokens = ["--max-new-tokens", str(args.max_new_tokens)] if job.task in (SINGLE, MULTI) else []
    return [sys.executable, "-c", "import sys; from kvstack.cli import main; sys.exit(main(sys.argv[1:]))", "eval",
            "--model", args.model, "--device", args.device, "--dtype", job.dtype or args.dtype, "--quiet", "--seed",
            str(args.seed), "--samples", str(args.samples), *new_tokens, "--tasks", job.task,
            "--lengths", job.length, "--threads", str(args.threads), "--out", str(out), "--recipes", *job.recipes]


def merge(parts: Path, target: Path) -> list[dict]:
    rows = []
    for f in sorted(parts.glob("job*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                pass
    target.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def table(rows: list[dict]) -> str:
    """Per task and length: each recipe's accuracy, ratio below bf16 and share of the full cache's accuracy on the
    same samples - ``kvstack report``'s summary (which also keeps weight dtypes and seeds apart), in short."""
    lines = ["| model | task | length | recipe | n | contains | vs bf16 | of full |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in sorted(summarize(rows), key=lambda s: (s["model"], s["task"], s["length"], s["recipe"])):
        rel = "-" if s.get("relative") is None else f"{s['relative']:.0%}"
        acc = "-" if s.get("contains") is None else f"{s['contains']:.0%}"
        lines.append(f"| {s['model']} | {s['task']} | {s['length']} | `{s['recipe']}` | {s['n']} | {acc} | "
                     f"{s['ratio_fp16'] or 0:.1f}x | {rel} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True, choices=PLANS)
    ap.add_argument("--model", default=None, help="default: smollm2-135m or gemma3-270m by plan")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--lengths", nargs="+", default=None, help="only these lengths of the plan (e.g. 4k)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=10, help="for the single and multi-key needles")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--per-job", type=int, default=2, help="recipes per process (one prefill shared by them)")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; unfinished jobs are stopped")
    ap.add_argument("--out", type=Path, required=True, help="rows.jsonl goes here")
    ap.add_argument("--scratch", type=Path, default=None, help="per-job rows and logs (default: --out)")
    args = ap.parse_args()
    args.model = args.model or ("gemma3-270m" if args.plan.startswith("gemma") else "smollm2-135m")
    queue = split([j for j in plan(args.plan) if args.lengths is None or j.length in args.lengths], args.per_job)
    scratch = args.scratch or args.out
    parts = scratch / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    expected = sum(len(j.recipes) for j in queue) * args.samples
    print(f"{len(queue)} jobs, {expected} cells, {args.procs} processes, model {args.model}, seed {args.seed}",
          flush=True)
    start, running, logs = time.monotonic(), {}, scratch / "logs"
    logs.mkdir(exist_ok=True)
    pending = list(enumerate(queue))
    last = 0.0
    while pending or running:
        while pending and len(running) < args.procs:
            k, job = pending.pop(0)
            log = (logs / f"job{k:03d}.txt").open("w")
            cmd = eval_command(args, job, parts / f"job{k:03d}.jsonl")
            running[k] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        for k, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                if proc.returncode:
                    print(f"job {k} {queue[k].task} {queue[k].length} exited {proc.returncode}: "
                          f"{(logs / f'job{k:03d}.txt').read_text()[-400:]}", flush=True)
                del running[k]
        elapsed = time.monotonic() - start
        if elapsed > args.deadline:
            print(f"deadline {args.deadline:.0f}s: stopping {len(running)} jobs, {len(pending)} never started")
            for proc, log in running.values():
                proc.kill()
                log.close()
            break
        if elapsed - last >= 20:
            last = elapsed
            print(f"t={elapsed:.0f}s {len(merge(parts, args.out / 'rows.jsonl'))}/{expected} cells", flush=True)
        time.sleep(1)
    rows = merge(parts, args.out / "rows.jsonl")
    print(f"{len(rows)}/{expected} cells in {time.monotonic() - start:.0f}s")
    print(table(rows))


if __name__ == "__main__":
    main()
