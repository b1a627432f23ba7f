"""Issue 5's report: bits per element (every overhead counted) against accuracy and perplexity, for every
quantizer in kvstack and transformers' own ``QuantizedCache`` (optimum-quanto) on identical inputs.

    nice .venv/bin/python benchmarks/quant_report.py --part retrieval [--samples 16]
    nice .venv/bin/python benchmarks/quant_report.py --part smollm2 [--samples 8]
    .venv/bin/python benchmarks/quant_report.py --table      # tables (markdown) + PNG from finished results
    nice .venv/bin/python benchmarks/quant_report.py --part retrieval --samples 8 --threads 1 \
        --out benchmarks/reports/quant_run4 --tasks niah_single niah_multikey ppl   # a new directory, some tasks

Rows: every quantizer, the rotated ones (``int4:rot``: Walsh-Hadamard before quantizing), and the mixed recipe
that ``kvstack diagnose --out <out>/mixed_<model>.txt`` proposed, when that file exists (it is one recipe line).
``--only`` runs a subset of the rows (by their label) into the same results file.

Retrieval part: kvstack-retrieval at 4k tokens, tasks niah_single, niah_multikey, qa (extractive), multihop
and ppl (held-out essays). SmolLM2 part: SmolLM2-135M at 1k, ppl (no cq there, kvquant fits its codebooks on
each cache: see PARTS). On the retrieval model kvquant/cq use codebooks calibrated once on the haystack essays
(never the held-out perplexity essays), written to reports/quant/codebooks/ (regenerated when missing; not
committed). Cells run through the eval harness (kvstack.eval.Runner: one shared prefill per sample,
resumable results.jsonl); the peer's cells are built from the same samples and prompts and run in the peers
venv (benchmarks/quant_peer_worker.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "reports" / "quant"
BOOKS = OUT / "codebooks"
PARTS = {
    "retrieval": dict(model="kvstack-retrieval", length=4096, tasks=["niah_single", "niah_multikey", "qa", "multihop",
                                                                       "ppl"], calib_tokens=8192, calib_seq=2048),
    # no calibrated codebooks here: fitting cq's 256-centroid codebooks for 30 layers took > 30 min on the shared
    # CPU, so kvquant fits its (small, counted) codebooks on each cache and cq is left out
    "smollm2": dict(model="smollm2-135m", length=1024, tasks=["ppl"], calib_tokens=0, calib_seq=1024),
}
PEERS = {"hf-quanto:4": 4, "hf-quanto:2": 2}  # transformers QuantizedCache, q_group_size=64, residual_length=128
PEER_GROUP, PEER_RESIDUAL = 64, 128


# clip ratios chosen by KL to the full cache on one haystack essay (2k tokens), not on the held-out ppl essays
ROTATED = ["int4:rot", "int3:rot", "int2:rot", "int2:axis=channel", "int2:axis=channel,rot",
           "int3:rot,clip=0.9", "int2:rot,clip=0.7", "int2:axis=channel,rot,clip=0.75",
           "int2:g128,axis=channel,rot,clip=0.75"]


def set_out(path: Path) -> None:
    """Write results, codebooks and tables under ``path`` (the run-1 report stays in reports/quant)."""
    global OUT, BOOKS
    OUT, BOOKS = path.resolve(), path.resolve() / "codebooks"


def mixed(part: dict) -> list[str]:
    """The diagnosed mixed recipe, if ``kvstack diagnose --out OUT/mixed_<model>.txt`` wrote one."""
    path = OUT / f"mixed_{part['model']}.txt"
    return [path.read_text(encoding="utf-8").strip()] if path.is_file() else []


def recipes(part: dict) -> list[str]:
    base = ["identity", "int8", "int4:g32", "int4:g64", "int4:g128,axis=channel", "int3", "int2", "kivi:4", "kivi:2"]
    if not part["calib_tokens"]:
        return base + ["kvquant:4", "kvquant:3", "gear:4", "gear:2"] + ROTATED + mixed(part)
    book = (BOOKS / part["model"]).relative_to(ROOT)
    return base + [f"kvquant:4,calibration={book}", f"kvquant:3,calibration={book}", "gear:4", "gear:2",
                   f"cq:2,calibration={book}", f"cq:1,calibration={book}"] + ROTATED + mixed(part)


def label(recipe: str) -> str:
    if " > " in recipe:
        return "mixed (diagnosed): " + recipe
    return recipe.split(",calibration=")[0] + (" (calibrated)" if ",calibration=" in recipe else "")


def ensure_codebooks(part: dict, model, tokenizer) -> None:
    from kvstack.eval.tasks.haystack import haystack_essays
    from kvstack.eval.texts import essay
    from kvstack.inspect.codebooks import calibrate_codebooks_to_file

    if not part["calib_tokens"] or (BOOKS / f"{part['model']}.safetensors").is_file():
        return
    names = haystack_essays()
    print(f"calibrating codebooks for {part['model']} on {part['calib_tokens']} haystack-essay tokens", flush=True)
    calibrate_codebooks_to_file(model, tokenizer, BOOKS / part["model"], [essay(n) for n in names],
                                "Paul Graham haystack essays (not the held-out perplexity essays)",
                                part["calib_tokens"], part["calib_seq"])


def run_peers(part: dict, samples: int, model, tokenizer, out: Path, threads: int, tasks: list[str]) -> None:
    """The peer's cells, from the very samples and prompts the Runner used, into the same results file."""
    from kvstack.eval.peers.kvpress_bridge import model_reference, peers_python
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.results import ResultsWriter, cell_key, read_rows
    from kvstack.eval.runner import EvalSpec, _answer_fields, _base_row, dense_bytes
    from kvstack.eval.tasks import get_task
    from kvstack.hf.model import model_info

    info = model_info(model)
    spec = EvalSpec(part["model"], list(PEERS), tasks, [part["length"]], samples)
    done = {cell_key(r["model"], r["seed"], r["task"], r["length"], r["index"], r["recipe"])
            for r in (read_rows(out)[0] if out.is_file() else []) if r.get("status") == "ok"}
    jobs, rows = [], {}
    for name in tasks:
        task = get_task(name)
        for sample in task.samples(tokenizer, part["length"], samples, 0):
            prompt = format_sample(tokenizer, sample)
            for recipe, nbits in PEERS.items():
                key = cell_key(part["model"], 0, name, part["length"], sample.index, recipe)
                if key in done:
                    continue
                rows[key] = ({**_base_row(spec, sample, part["length"], recipe, prompt), "system": "transformers"},
                             sample)
                jobs.append({
                    "id": key, "nbits": nbits, "group": PEER_GROUP, "residual": PEER_RESIDUAL,
                    "context_ids": prompt.context_ids.tolist(), "question_ids": prompt.question_ids.tolist(),
                    "continuation_ids": None if prompt.continuation_ids is None else prompt.continuation_ids.tolist(),
                    "answer_ids": None if prompt.answer_ids is None else prompt.answer_ids.tolist(),
                    "max_new_tokens": task.max_new_tokens,
                })
    if not jobs:
        return
    request = {**model_reference(part["model"]), "dtype": str(info.dtype).removeprefix("torch."),
               "threads": threads, "jobs": jobs}
    with tempfile.TemporaryDirectory() as tmp, ResultsWriter(out) as writer:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps(request), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.Popen([str(peers_python()), str(ROOT / "benchmarks" / "quant_peer_worker.py"), str(req)],
                                stdout=subprocess.PIPE, text=True, env=env)
        for line in proc.stdout:
            result = json.loads(line)
            if "hello" in result:
                print("peer:", line.strip(), flush=True)
                (OUT / f"peer_versions_{part['model']}.json").write_text(line, encoding="utf-8")
                continue
            row, sample = rows[result["id"]]
            dense = dense_bytes(info, row["context_tokens"])
            row.update(status="ok", cache_bytes=result["cache_bytes"], dense_bytes=dense,
                       ratio=dense / result["cache_bytes"],
                       bytes_per_token=result["cache_bytes"] / row["context_tokens"],
                       tokens_kept=row["context_tokens"] * info.num_layers * info.num_kv_heads,
                       prefill_s=result["prefill_s"], compress_s=None, generate_s=result["generate_s"])
            for k in ("nll_sum", "nll_tokens", "answer_nll_sum", "answer_tokens"):
                if k in result:
                    row[k] = result[k]
            if "answer_ids" in result:
                row.update(_answer_fields(tokenizer, sample, result["answer_ids"]))
            writer.write(row)
        if proc.wait() != 0:
            raise SystemExit(f"peer worker exited with {proc.returncode}")


def run(part_name: str, samples: int, threads: int, tasks: list[str] | None, only: list[str] | None) -> None:
    """kvstack's cells first (task by task, in ``tasks`` order), then the peer's unless ``only`` leaves it out."""
    import torch

    from kvstack.eval.runner import EvalSpec, Runner, load_model

    part = PARTS[part_name]
    tasks = tasks or part["tasks"]
    unknown = sorted(set(tasks) - set(part["tasks"]))
    if unknown:
        raise SystemExit(f"--tasks {unknown}: the {part_name} part has {part['tasks']}")
    torch.set_num_threads(threads)
    model, tokenizer = load_model(part["model"])
    ensure_codebooks(part, model, tokenizer)
    out = OUT / f"results_{part_name}.jsonl"
    rows = [r for r in recipes(part) if only is None or label(r) in only]
    if rows:
        spec = EvalSpec(part["model"], rows, tasks, [part["length"]], samples, threads=threads)
        print(Runner(spec, out, model=model, tokenizer=tokenizer).run(), flush=True)
    if only is None or any(p in only for p in PEERS):
        run_peers(part, samples, model, tokenizer, out, threads, tasks)


# --- tables ----------------------------------------------------------------------------------------------
def elements(part: dict) -> int:
    """K and V elements per context token of the model (layers x 2 x kv heads x head_dim)."""
    cfg = json.loads((OUT / f"geometry_{part['model']}.json").read_text())
    return cfg["layers"] * 2 * cfg["kv_heads"] * cfg["head_dim"]


def summary(part_name: str, samples: int) -> tuple[list[dict], dict]:
    """Summaries per (task, recipe) over sample indices ``< samples`` (every system on the same samples)."""
    from kvstack.eval.report import summarize
    from kvstack.eval.results import read_rows

    rows = [r for r in read_rows(OUT / f"results_{part_name}.jsonl")[0] if r["index"] < samples]
    return rows, {(s["task"], s["recipe"]): s for s in summarize(rows)}


def spread(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def paired_nll(rows: list[dict], recipe: str, ref: str) -> tuple[float, float, int, int] | None:
    """Held-out NLL of ``recipe`` minus ``ref``'s on the same samples: (mean, its ±1σ, n, samples where lower)."""
    def per_sample(name: str) -> dict[int, float]:
        return {r["index"]: r["nll_sum"] / r["nll_tokens"] for r in rows
                if r["task"] == "ppl" and r["recipe"] == name and r.get("nll_tokens")}

    mine, other = per_sample(recipe), per_sample(ref)
    diffs = [mine[i] - other[i] for i in mine if i in other]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean, sd / math.sqrt(len(diffs)), len(diffs), sum(d < 0 for d in diffs)


def paired_ppl_spread(rows: list[dict], recipe: str) -> float | None:
    """±1σ (in %) of the perplexity change vs the full cache: the spread of the per-sample NLL differences."""
    pair = paired_nll(rows, recipe, "identity")
    return None if pair is None else 100 * math.expm1(pair[1])


def ppl_pairs(part_name: str, samples: int, ref: str = "int4:g64") -> str:
    """Perplexity change of every row vs the full cache and vs ``ref``, paired per sample (exp of mean NLL Δ)."""
    rows, _ = summary(part_name, samples)
    lines = [f"| recipe | n | ppl Δ vs full (±1σ) | ppl Δ vs `{ref}` (±1σ) | samples better than `{ref}` |",
             "|---|---|---|---|---|"]
    for recipe in recipes(PARTS[part_name]) + list(PEERS):
        full, other = paired_nll(rows, recipe, "identity"), paired_nll(rows, recipe, ref)
        if full is None or other is None:
            continue
        pct = lambda x: 100 * math.expm1(x)  # noqa: E731
        lines.append(f"| `{label(recipe)}` | {full[2]} | {pct(full[0]):+.2f}% ±{pct(full[1]):.2f}% | "
                     f"{pct(other[0]):+.2f}% ±{pct(other[1]):.2f}% | {other[3]}/{other[2]} |")
    return "\n".join(lines)


def table(part_name: str, samples: int) -> tuple[str, list[dict]]:
    part = PARTS[part_name]
    rows, by = summary(part_name, samples)
    per_elem = elements(part)
    gen_tasks = [t for t in part["tasks"] if t != "ppl"]
    head = ("| recipe | bits/elem | " + "".join(f"{t} (±1σ) | " for t in gen_tasks)
            + ("mean rel. full | answer NLL Δ | " if gen_tasks else "") + "ppl | ppl Δ (±1σ paired) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    points = []
    for recipe in recipes(part) + list(PEERS):
        cells = [by.get((t, recipe)) for t in part["tasks"]]
        first = next((c for c in cells if c and c.get("n")), None)
        if first is None:
            continue
        bits = first["bytes_per_token"] * 8 / per_elem
        parts, rel, dnll = [], [], []
        for t in gen_tasks:
            s = by.get((t, recipe))
            if not s or not s.get("n"):
                parts.append("-")
                continue
            parts.append(f"{s['contains']:.2f} ±{spread(s['contains'], s['n']):.2f}")
            if s.get("relative") is not None:
                rel.append(s["relative"])
            if s.get("answer_nll_delta") is not None:
                dnll.append(s["answer_nll_delta"])
        p = by.get(("ppl", recipe), {})
        ppl = f"{p['ppl']:.3f}" if p.get("ppl") else "-"
        dppl = f"{p['ppl_delta']:+.3f} ({100 * p['ppl_delta'] / p['ppl_full']:+.2f}%)" if p.get("ppl_full") else "-"
        if p.get("ppl_full") and (sd := paired_ppl_spread(rows, recipe)) is not None:
            dppl += f" ±{sd:.2f}%"
        mean_rel = sum(rel) / len(rel) if rel else None
        gen = "".join(f"{c} | " for c in parts)
        if gen_tasks:
            gen += f"{'-' if mean_rel is None else f'{mean_rel:.3f}'} | "
            gen += f"{'-' if not dnll else f'{sum(dnll) / len(dnll):+.3f}'} | "
        lines.append(f"| `{label(recipe)}` | {bits:.2f} | {gen}{ppl} | {dppl} |")
        points.append(dict(recipe=label(recipe), bits=bits, rel=mean_rel,
                           dppl=None if not p.get("ppl_full") else 100 * p["ppl_delta"] / p["ppl_full"],
                           peer=recipe in PEERS))
    n = max((s["n"] for s in by.values()), default=0)
    note = "; ±1σ = sqrt(p(1-p)/n), the binomial spread of one cell" if gen_tasks else ""
    lines.append(f"\nn = {n} samples per cell{note}.")
    return "\n".join(lines), points


def plot(part_name: str, points: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, ylabel in ((axes[0], "rel", "mean accuracy relative to the full cache"),
                            (axes[1], "dppl", "held-out perplexity change (%)")):
        for p in points:
            if p[key] is None:
                continue
            peer = p["peer"]
            ax.scatter(p["bits"], p[key], marker="s" if peer else "o", color="tab:red" if peer else "tab:blue")
            ax.annotate(p["recipe"], (p["bits"], p[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("bits per K/V element (codes + scales + outliers + codebooks + sink + positions)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("symlog", linthresh=1.0)
    fig.suptitle(f"quantizers on {PARTS[part_name]['model']} ({PARTS[part_name]['length']} tokens); "
                 "squares: transformers QuantizedCache (quanto)")
    fig.tight_layout()
    path = OUT / f"quant_{part_name}.png"
    fig.savefig(path, dpi=120)
    return path


def write_geometry(part_name: str) -> None:
    from kvstack.hf.model import model_info
    from kvstack.zoo import load

    part = PARTS[part_name]
    path = OUT / f"geometry_{part['model']}.json"
    if path.is_file():
        return
    info = model_info(load(part["model"])[0])
    path.write_text(json.dumps({"layers": info.num_layers, "kv_heads": info.num_kv_heads,
                                "head_dim": info.head_dim, "dtype": str(info.dtype)}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=sorted(PARTS), action="append")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="only write the tables and PNGs of finished results")
    ap.add_argument("--out", type=Path, default=OUT, help="results, codebooks, tables (default: %(default)s)")
    ap.add_argument("--tasks", nargs="+", help="run only these tasks of the part, in this order")
    ap.add_argument("--only", nargs="+", help="run only these rows (labels as in the table, e.g. int2:rot hf-quanto:2)")
    args = ap.parse_args()
    set_out(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    parts = args.part or sorted(PARTS)
    for name in parts:
        write_geometry(name)
        if not args.table:
            run(name, args.samples, args.threads, args.tasks, args.only)
        if (OUT / f"results_{name}.jsonl").is_file():
            text, points = table(name, args.samples)
            (OUT / f"table_{name}.md").write_text(text + "\n", encoding="utf-8")
            pairs = ppl_pairs(name, args.samples)
            (OUT / f"ppl_pairs_{name}_n{args.samples}.md").write_text(pairs + "\n", encoding="utf-8")
            print(pairs, flush=True)
            print(f"## {PARTS[name]['model']}\n\n{text}\nwrote {plot(name, points)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
