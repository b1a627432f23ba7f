"""Rebuild a SentencePiece-BPE tokenizer (Gemma's) from the vocabulary stored in a GGUF file.

Why: transformers 5.2's GGUF loader builds Gemma 3's tokenizer without the right merges and without
its BOS token: "Hello world" comes out as ``Hello ▁w or ld`` instead of ``<bos> Hello ▁world``, and
the model, fed those ids, answers "is is is ...". The GGUF stores each piece with its score, which
is all SentencePiece-BPE needs: a pair merges when the joined piece is in the vocabulary, earlier
(higher score) pieces first. This is the same derivation transformers uses for SentencePiece models.
"""

from __future__ import annotations

from pathlib import Path

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _field(reader, key: str):
    f = reader.fields[key]
    return [f.parts[i] for i in f.data]


def read_vocab(gguf_path: Path) -> dict:
    """Pieces, scores, token types and special ids of a GGUF file's ``tokenizer.ggml.*`` fields."""
    import gguf

    r = gguf.GGUFReader(str(gguf_path))
    pieces = [bytes(p).decode("utf-8") for p in _field(r, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in _field(r, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in _field(r, "tokenizer.ggml.token_type")]
    special = {}
    for name in ("bos", "eos", "unknown", "padding"):
        key = f"tokenizer.ggml.{name}_token_id"
        if key in r.fields:
            special[name] = int(_field(r, key)[0][0])
    key = "tokenizer.ggml.add_bos_token"
    add_bos = bool(_field(r, key)[0][0]) if key in r.fields else True
    return {"pieces": pieces, "scores": scores, "types": types, "special": special, "add_bos": add_bos}


def spm_merges(pieces: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a normal piece into two pieces."""
    rank = {p: i for i, p in enumerate(pieces) if types[i] in (_NORMAL, _USER)}
    order = sorted(rank, key=lambda p: (-scores[rank[p]], rank[p]))
    merges = []
    for piece in order:
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in rank and right in rank:
                local.append((rank[left], rank[right], left, right))
        local.sort()
        merges.extend((left, right) for _, _, left, right in local)
    return merges


def build_gemma_tokenizer(gguf_path: Path):
    """A ``transformers`` fast tokenizer equivalent to Gemma's, from the GGUF vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    v = read_vocab(gguf_path)
    pieces, types, special = v["pieces"], v["types"], v["special"]
    vocab = {p: i for i, p in enumerate(pieces)}
    unk = pieces[special.get("unknown", 3)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(pieces, v["scores"], types), unk_token=unk,
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, t in zip(pieces, types) if t == _CONTROL])
    tok.add_tokens([AddedToken(p, special=False, normalized=False)
                    for p, t in zip(pieces, types) if t == _USER and not p.startswith("<unused")])
    bos = pieces[special.get("bos", 2)]
    if v["add_bos"]:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=pieces[special.get("eos", 1)], unk_token=unk,
        pad_token=pieces[special.get("padding", 0)], add_bos_token=v["add_bos"], clean_up_tokenization_spaces=False,
    )
