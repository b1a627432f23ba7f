"""Train the byte-level BPE tokenizer of the retrieval model with the ``tokenizers`` library.

Byte-level, so any text round-trips exactly; digits are split one per token, so a 7-digit number
is 7 tokens whatever its value (copying numbers is the core retrieval skill, and a BPE that merges
"19" but not "91" makes some answers harder than others). No BOS is added: kvstack's prompt helper
tokenizes with ``add_special_tokens=False``, and training sees text the same way.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path

from training import SHIPPED_DIR

EOT = "<|endoftext|>"
PAD = "<|pad|>"


def build_tokenizer_model():
    """An untrained byte-level BPE with digit splitting (the pipeline the trainer fills in)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterator[str], vocab_size: int):
    from tokenizers import pre_tokenizers, trainers

    tok = build_tokenizer_model()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_hf(tok, out: Path, model_max_length: int) -> None:
    """Write tokenizer.json + tokenizer_config.json that AutoTokenizer loads offline."""
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=None, pad_token=PAD,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))


def sample_texts(corpus: Path, max_chars: int, seed: int) -> Iterator[str]:
    from training.corpus import read_docs

    docs = read_docs(corpus)
    random.Random(seed).shuffle(docs)
    used = 0
    for d in docs:
        if used >= max_chars:
            break
        used += len(d["text"])
        yield d["text"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path, default=Path(".kvstack/train/train.jsonl.xz"))
    ap.add_argument("--out", type=Path, default=SHIPPED_DIR)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--mb", type=float, default=40, help="MB of corpus text to learn merges from")
    ap.add_argument("--max-length", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tok = train_tokenizer(sample_texts(args.corpus, int(args.mb * 1e6), args.seed), args.vocab_size)
    save_hf(tok, args.out, args.max_length)
    print(json.dumps({"vocab_size": tok.get_vocab_size(), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
