"""Synthetic long-context retrieval samples: facts hidden in real text, asked for at the end.

Samples are built in token space so their length is exact (the curriculum needs samples of
exactly 256 ... 8192 tokens): a window of real text that ends at a sentence end, facts inserted
after sentence-ending tokens, then question/answer blocks. Every piece starts with a space or a
newline and every insertion point is a sentence-ending punctuation token, so the ids equal what
tokenizing the whole text at once would give (the tests check this).

Tasks: ``single``, ``multikey`` (distractor facts about other keys), ``multiquery`` (several keys in
one question), ``multivalue`` (one key, several values), ``reverse`` (which key has a value),
``passkey`` (one fact in dull filler), ``vartrack`` (a value copied along a chain of variables),
``multihop`` (a key that points to another key), ``lookalike`` (multi-key with keys of one shape, mostly in one
shared frame: :mod:`lookalike`; only in a ``--mix``). ``split="heldout"`` draws frames, questions,
attributes and names from the ``HELDOUT_*`` lists of :mod:`templates` (never trained on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from kvstack.errors import InputError
from training import templates as T
from training.lookalike import lookalike_keys

TASKS = ("single", "multikey", "multiquery", "multivalue", "reverse", "passkey", "vartrack", "multihop", "lookalike")
# Run 3 moved weight to multi-key and multi-hop (the held-out weak spots) from lists of values.
TRAIN_MIX = {"single": 0.18, "multikey": 0.26, "multiquery": 0.08, "multivalue": 0.08, "reverse": 0.06,
             "passkey": 0.05, "vartrack": 0.1, "multihop": 0.19}
_ENDS = (".", "!", "?")


@dataclass
class Sample:
    """``ids`` has length+1 tokens (inputs ``ids[:-1]``, targets ``ids[1:]``); ``answer`` marks answer tokens."""

    ids: np.ndarray
    answer: np.ndarray
    task: str
    needle_spans: list[tuple[int, int]]  # [start, end) token spans of inserted facts
    needle_texts: list[str]
    qas: list[tuple[str, str, str]]  # (question, answer, answer prefix or "") in order
    qa_spans: list[tuple[int, int, int]]  # per QA: block start, answer start, answer end (token indices)
    meta: dict = field(default_factory=dict)

    @property
    def context_len(self) -> int:
        """Tokens before the first question block: what a cache would hold."""
        return self.qa_spans[0][0]


class TokenStream:
    """Many documents' token ids end to end, with the positions after which a fact may be inserted."""

    def __init__(self, ids: np.ndarray, insertable: np.ndarray, clean_start: np.ndarray | None = None):
        if len(ids) != len(insertable):
            raise InputError("ids and insertable must have the same length")
        self.ids = ids
        self.points = np.flatnonzero(insertable)
        # Tokens that begin a character (whitespace-led): a window starting elsewhere may begin inside a
        # multi-byte character, which decodes to U+FFFD and does not tokenize back to the same ids.
        self.clean_start = np.ones(len(ids), bool) if clean_start is None else clean_start

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, vocab: VocabTables, docs: Sequence[np.ndarray], joiner: np.ndarray) -> TokenStream:
        parts = []
        for d in docs:
            # Whitespace at a document's edges would merge with the joiner when the text is tokenized whole.
            keep = np.flatnonzero(~vocab.blank[d])
            if len(keep):
                parts.append(d[keep[0] : keep[-1] + 1])
                parts.append(joiner)
        ids = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
        ends = vocab.sentence_end[ids]
        starts_space = np.append(vocab.space_start[ids[1:]], True) if len(ids) else np.zeros(0, bool)
        return cls(ids, ends & starts_space, vocab.space_start[ids] if len(ids) else np.zeros(0, bool))

    def window(self, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``length`` tokens ending at an insertion point, and the window's insertion points (relative)."""
        lo = int(np.searchsorted(self.points, length - 1))
        if lo >= len(self.points):
            raise InputError(f"text stream of {len(self)} tokens has no sentence end to cut a {length}-token window")
        for _ in range(32):  # prefer a window that starts on a character boundary
            end = int(self.points[int(rng.integers(lo, len(self.points)))])
            start = end - length + 1
            if self.clean_start[start]:
                break
        a, b = np.searchsorted(self.points, start), np.searchsorted(self.points, end, side="right")
        return self.ids[start : end + 1], self.points[a:b] - start


class VocabTables:
    """Per-token facts of a ``tokenizers.Tokenizer``: sentence-ending punctuation, leading whitespace."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        n = tokenizer.get_vocab_size()
        self.sentence_end = np.zeros(n, bool)
        self.space_start = np.zeros(n, bool)
        self.blank = np.zeros(n, bool)
        for i in range(n):
            s = tokenizer.decode([i], skip_special_tokens=False)
            if s and s[0] in " \n\t":
                self.space_start[i] = True
            if s and not s.strip():
                self.blank[i] = True
            if s and s.endswith(_ENDS) and not any(c.isalnum() or c.isspace() for c in s) and len(s) <= 3:
                self.sentence_end[i] = True
        self.eot = tokenizer.token_to_id("<|endoftext|>")
        # A paragraph break as it tokenizes before a word (alone, "\n\n" may become one token; in text it need not).
        probe = self.encode(["\n\nA"])[0]
        self.paragraph = probe[:-1] if tokenizer.decode([int(probe[-1])]) == "A" else self.encode(["\n\n"])[0]

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


@dataclass(frozen=True)
class Phrasebook:
    """The lists one split draws from (training lists, or the held-out ones)."""

    first: list[str]
    last: list[str]
    words: list[str]
    attributes: dict[str, list[str]]
    frames: list[str]
    questions: list[str]
    qa_formats: list[tuple[str, str]]
    # Procedural frames and attributes (training only): drawn instead of the hand-written ones with
    # probability ``generated_share``, so the model learns to look up, not to recognise sentences.
    generated_frames: Sequence[str] = ()
    generated_questions: Sequence[str] = ()
    generated_share: float = 0.0
    attribute_heads: dict[str, Sequence[str]] | None = None
    open_words: Sequence[str] = ()  # value words harvested from the training prose (``value_words``)


TRAIN = Phrasebook(T.FIRST_NAMES, T.LAST_NAMES, T.VALUE_WORDS, T.ATTRIBUTES, T.NEEDLE_FRAMES, T.QUESTION_FRAMES,
                   T.QA_FORMATS, T.GENERATED_NEEDLE_FRAMES, T.GENERATED_QUESTION_FRAMES, 0.6, T.ATTRIBUTE_HEADS)
HELDOUT = Phrasebook(T.HELDOUT_FIRST_NAMES, T.HELDOUT_LAST_NAMES, T.HELDOUT_VALUE_WORDS, T.HELDOUT_ATTRIBUTES,
                     T.HELDOUT_NEEDLE_FRAMES, T.HELDOUT_QUESTION_FRAMES, T.HELDOUT_QA_FORMATS)


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


class Facts:
    """Random keys, attributes and values, distinct within one sample."""

    def __init__(self, book: Phrasebook, rng: np.random.Generator):
        self.book, self.rng, self.used = book, rng, set()

    def _fresh(self, make) -> str:
        for _ in range(50):
            s = make()
            if s not in self.used:
                self.used.add(s)
                return s
        raise InputError("could not draw a fresh value; the word lists are too small")

    def pseudo_word(self, lo: int = 2, hi: int = 3) -> str:
        return "".join(_pick(self.rng, T.SYLLABLES) for _ in range(int(self.rng.integers(lo, hi + 1))))

    def entity(self) -> str:
        """A key: a person, a made-up word, an object, a code or a hyphenated compound; sometimes quoted."""
        name = self._entity()
        return f"'{name}'" if self.rng.random() < 0.15 else name

    def _entity(self) -> str:
        r, b = self.rng, self.book
        kind = int(r.integers(6))
        if kind == 0:
            make = lambda: f"{_pick(r, b.first)} {_pick(r, b.last)}"
        elif kind == 1:
            make = lambda: _pick(r, b.first) if r.random() < 0.5 else (
                 f"{_pick(r, b.first)} {self.pseudo_word().title()}"
            )
        elif kind == 2:
            make = lambda: self.pseudo_word().title()
        elif kind == 3 and b is not HELDOUT:
            make = lambda: f"the {_pick(r, T.ADJECTIVES)} {_pick(r, T.NOUNS)}"
        elif kind == 4:
            make = lambda: f"{_pick(r, T.ADJECTIVES)}-{_pick(r, T.NOUNS)}" if b is not HELDOUT else (
                f"{self.pseudo_word(1, 2)}-{self.pseudo_word(1, 2)}"
            )
        else:
            make = lambda: f"{_pick(r, T.CODE_PREFIXES)} {chr(65 + int(r.integers(26)))}-{int(r.integers(10, 1000))}"
        return self._fresh(make)

    def attribute(self, kind: str | None = None) -> tuple[str, str]:
        r, b = self.rng, self.book
        kind = kind or _pick(r, ("num", "num", "word", "code"))
        if b.attribute_heads and r.random() < 0.35:  # an invented attribute: "<modifier> <head>"
            modifier = self.pseudo_word() if r.random() < 0.5 else _pick(r, T.NOUNS)
            attr = f"{modifier} {_pick(r, b.attribute_heads[kind])}"
            if attr not in T.HELDOUT_ATTRIBUTE_SET:
                return kind, attr
        return kind, _pick(r, b.attributes[kind])

    def value(self, kind: str) -> str:
        r = self.rng
        if kind == "num":
            make = lambda: str(int(r.integers(1, 10))) + "".join(map(str, r.integers(0, 10, int(r.integers(2, 9)))))
        elif kind == "word":
            if self.book.open_words and r.random() < 0.5:
                make = lambda: _pick(r, self.book.open_words)
            else:
                make = lambda: _pick(r, self.book.words) if r.random() < 0.6 else self.pseudo_word(2, 3)
        else:
            alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"

            def make():
                style = int(r.integers(3))
                if style == 0:
                    head, tail = (_pick(r, alphabet) for _ in range(3)), (_pick(r, alphabet) for _ in range(4))
                    return "".join(head) + "-" + "".join(tail)
                if style == 1:
                    return "".join(_pick(r, "0123456789abcdef") for _ in range(int(r.integers(6, 11))))
                return f"{self.pseudo_word(1, 2)}{int(r.integers(10, 100))}"
        return self._fresh(make)

    def variable(self) -> str:
        r = self.rng
        style = int(r.integers(3))
        if style == 0:
            make = lambda: "".join(chr(97 + int(c)) for c in r.integers(0, 26, int(r.integers(2, 5))))
        elif style == 1:
            make = lambda: "".join(chr(65 + int(c)) for c in r.integers(0, 26, int(r.integers(3, 6))))
        else:
            make = lambda: f"{_pick(r, T.SYLLABLES)}_{int(r.integers(0, 100))}"
        return self._fresh(make)


def _render(frame: str, **kw: str) -> str:
    text = frame.format(**kw)
    return text[0].upper() + text[1:]


def _join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _plural(attr: str) -> str:
    return attr[:-1] + "ies" if attr.endswith("y") and not attr.endswith(("ey", "ay")) else attr + "s"


def build_task(task: str, facts: Facts, max_needles: int, prefix_p: float = 0.0
               ) -> tuple[list[str], list[tuple[str, str, str]], dict]:
    """Facts to insert (in the order they must appear) and (question, answer, answer prefix) triples.

    With probability ``prefix_p`` an answer starts by restating the question ("The pin of X is"),
    the prefix being part of the prompt, not of the answer the model must produce.
    """
    r, b = facts.rng, facts.book
    generated = lambda: r.random() < b.generated_share
    frame = lambda: _pick(r, b.generated_frames if generated() else b.frames)
    question = lambda: _pick(r, b.generated_questions if generated() else b.questions)

    def pre(kind: str, **fields: str) -> str:
        return _render(_pick(r, T.ANSWER_PREFIXES[kind]), **fields) if r.random() < prefix_p else ""

    if task in ("single", "passkey"):
        kind, attr = facts.attribute()
        e, v = facts.entity(), facts.value(kind)
        needles = [_render(frame(), E=e, A=attr, V=v)]
        if task == "single" and max_needles > 1 and r.random() < 0.3:  # same key, another attribute
            k2, a2 = facts.attribute()
            if a2 != attr:
                needles.append(_render(frame(), E=e, A=a2, V=facts.value(k2)))
        r.shuffle(needles)
        return needles, [(_render(question(), E=e, A=attr), v, pre("fact", E=e, A=attr))], {"keys": 1}
    if task in ("multikey", "multiquery", "reverse"):
        n = int(r.integers(2, max(3, min(max_needles, 8) + 1)))
        kind, attr = facts.attribute()
        same_attr = task == "multiquery" or r.random() < 0.7
        rows = []
        for _ in range(n):
            k, a = (kind, attr) if same_attr else facts.attribute()
            rows.append((facts.entity(), a, facts.value(k)))
        needles = [_render(frame(), E=e, A=a, V=v) for e, a, v in rows]
        order = r.permutation(n)
        if task == "multikey":
            asked = [rows[i] for i in order[: int(r.integers(1, min(3, n) + 1))]]
            qas = [(_render(question(), E=e, A=a), v, pre("fact", E=e, A=a)) for e, a, v in asked]
        elif task == "reverse":
            e, a, v = rows[order[0]]
            qas = [(_render(_pick(r, T.REVERSE_QUESTION_FRAMES), A=a, V=v), e, pre("owner", A=a))]
        else:
            asked = [rows[i] for i in sorted(order[: int(r.integers(2, min(4, n) + 1))])]
            names = [e for e, _, _ in asked]
            attr = asked[0][1]
            q = _render(_pick(r, T.MULTI_QUERY_QUESTIONS), A=attr, As=_plural(attr), Es=_join_names(names))
            qas = [(q, ", ".join(v for _, _, v in asked), pre("queries", As=_plural(attr)))]
        return needles, qas, {"keys": n}
    if task == "lookalike":  # only the whole key tells the facts apart: one attribute, mostly one frame
        kind, attr = facts.attribute()
        keys = lookalike_keys(facts, int(r.integers(3, max(4, min(max_needles, 10) + 1))), heldout=b is HELDOUT)
        shared = frame()
        frames = [shared] * len(keys) if r.random() < 0.8 else [frame() for _ in keys]
        rows = [(e, facts.value(kind)) for e in keys]
        needles = [_render(f, E=e, A=attr, V=v) for f, (e, v) in zip(frames, rows)]
        others = [int(i) for i in r.permutation(np.arange(1, len(keys)))[: int(r.integers(0, 2))]]
        qas = [(_render(question(), E=rows[i][0], A=attr), rows[i][1], pre("fact", E=rows[i][0], A=attr))
               for i in [0, *others]]
        order = r.permutation(len(needles))
        return [needles[i] for i in order], qas, {"keys": len(keys), "target_key": keys[0]}
    if task == "multivalue":
        kind, attr = facts.attribute()
        e = facts.entity()
        vals = [facts.value(kind) for _ in range(int(r.integers(2, max(3, min(max_needles, 4) + 1))))]
        frames = list(T.MULTI_VALUE_FRAMES) + list(b.frames)
        needles = [_render(_pick(r, frames), E=e, A=attr, As=_plural(attr), V=v) for v in vals]
        for _ in range(int(r.integers(0, 3))):  # another key with the same attribute
            other = _render(frame(), E=facts.entity(), A=attr, V=facts.value(kind))
            needles.insert(int(r.integers(len(needles) + 1)), other)
        q = _render(_pick(r, T.MULTI_VALUE_QUESTIONS), A=attr, As=_plural(attr), E=e)
        return needles, [(q, ", ".join(vals), pre("values", E=e, As=_plural(attr)))], {"keys": 1, "ordered": True}
    if task == "vartrack":
        chains = []
        for _ in range(1 + int(r.integers(0, 3)) if max_needles >= 6 else 1):
            value = facts.value("num")
            names = [facts.variable() for _ in range(int(r.integers(2, max(3, min(max_needles, 5) + 1))))]
            chains.append((value, names))
        needles_per_chain = []
        for value, names in chains:
            steps = [_render(_pick(r, T.ASSIGN_FRAMES), X=names[0], V=value)]
            steps += [_render(_pick(r, T.COPY_FRAMES), X=names[i - 1], Y=names[i]) for i in range(1, len(names))]
            needles_per_chain.append(steps)
        needles = _interleave(needles_per_chain, r)
        value, names = chains[0]
        if r.random() < 0.6:
            qa = (_render(_pick(r, T.TRACK_QUESTIONS), V=value), ", ".join(names), pre("names", V=value))
        else:
            qa = (_render(_pick(r, T.TRACK_VALUE_QUESTIONS), Y=names[-1]), value, pre("value_of", Y=names[-1]))
        return needles, [qa], {"keys": len(chains), "ordered": True}
    if task == "multihop":
        kind, attr = facts.attribute()
        hops = int(r.integers(2, 4)) if max_needles >= 3 else 2
        ents = [facts.entity() for _ in range(hops)]
        v = facts.value(kind)
        needles = [_render(_pick(r, T.HOP_FRAMES), E=ents[i], E2=ents[i + 1], A=attr) for i in range(hops - 1)]
        needles.append(_render(frame(), E=ents[-1], A=attr, V=v))
        for _ in range(int(r.integers(0, 3))):
            needles.append(_render(frame(), E=facts.entity(), A=attr, V=facts.value(kind)))
        r.shuffle(needles)
        return needles, [(_render(question(), E=ents[0], A=attr), v, pre("fact", E=ents[0], A=attr))], {"keys": hops}
    raise InputError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def _interleave(chains: list[list[str]], r: np.random.Generator) -> list[str]:
    """Merge chains keeping each chain's own order (an assignment before its copies)."""
    queues = [list(c) for c in chains]
    out = []
    while any(queues):
        live = [q for q in queues if q]
        out.append(_pick(r, live).pop(0))
    return out


class SampleMaker:
    """Builds :class:`Sample` s of an exact token length from text streams."""

    def __init__(self, vocab: VocabTables, text: TokenStream, code: TokenStream | None = None,
                 open_words: Sequence[str] = ()):
        self.vocab, self.text = vocab, text
        self.train_book = replace(TRAIN, open_words=tuple(open_words)) if open_words else TRAIN
        self.code = code if code is not None and len(code.points) > 8 else None
        self.filler_sentences = vocab.encode([" " + s for s in T.FILLER_SENTENCES])

    def _filler(self, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pieces, total = [], 0
        block = [self.filler_sentences[i] for i in rng.permutation(len(self.filler_sentences))[:6]]
        while total < length + 64:
            for p in block:
                pieces.append(p)
                total += len(p)
        ids = np.concatenate(pieces)
        ends = np.cumsum([len(p) for p in pieces]) - 1
        cut = ends[np.searchsorted(ends, length - 1)]
        ids = ids[cut - length + 1 : cut + 1]
        rel = ends[(ends >= cut - length + 1) & (ends <= cut)] - (cut - length + 1)
        return ids, rel

    def make(self, task: str, length: int, rng: np.random.Generator, split: str = "train",
             depths: Sequence[float] | None = None, qa_format: tuple[str, str] | None = None,
             bos: bool | None = None) -> Sample:
        """A ``task`` sample of exactly ``length + 1`` tokens. ``depths`` (0..1) place the facts in order.

        ``bos``: start with the end-of-text token, as evaluation harnesses prepend a BOS (None: a coin flip).
        """
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        if split not in ("train", "heldout"):
            raise InputError(f"split must be 'train' or 'heldout', not {split!r}")
        if length < 128:
            raise InputError(f"length {length} is too short for a retrieval sample: use at least 128 tokens")
        book = self.train_book if split == "train" else HELDOUT
        facts = Facts(book, rng)
        needles, qas, meta = build_task(task, facts, max(1, length // 96), prefix_p=0.35 if split == "train" else 0.0)
        fmt = qa_format or (book.qa_formats[0] if rng.random() < 0.5 else _pick(rng, book.qa_formats))
        blocks = [f"{fmt[0]}{q}{fmt[1]}" + (f" {p}" if p else "") for q, _, p in qas]
        answers = [f" {a}" for _, a, _ in qas]
        enc = self.vocab.encode([" " + n for n in needles] + blocks + answers)
        k, m = len(needles), len(needles) + len(qas)
        n_tok, q_tok, a_tok = enc[:k], enc[k:m], enc[m:]
        tail = sum(len(x) for x in q_tok) + sum(len(x) for x in a_tok) + 1  # +1: end of text after the last answer
        hay_len = length + 1 - tail - sum(len(x) for x in n_tok)
        if hay_len < 32:
            raise InputError(f"length {length} leaves no room for a haystack for task {task!r}")
        source = "text"
        if task == "passkey":
            source = "filler"
        elif self.code is not None and rng.random() < 0.15:
            source = "code"
        if source == "filler":
            hay, points = self._filler(hay_len, rng)
        else:
            hay, points = (self.code if source == "code" else self.text).window(hay_len, rng)
        points = points[points < hay_len - 1]  # never after the last token: the question follows it
        if len(points) == 0:
            points = np.array([hay_len - 1])
        if depths is None:
            depths = np.sort(rng.random(len(needles)))
        elif len(depths) != len(needles):
            raise InputError(f"task {task!r} inserts {len(needles)} facts; got {len(depths)} depths")
        cuts = [int(points[min(len(points) - 1, int(np.searchsorted(points, d * (hay_len - 1))))]) + 1 for d in depths]
        parts, spans, pos, prev = [], [], 0, 0
        for cut, nt in zip(cuts, n_tok):
            parts.append(hay[prev:cut])
            pos += cut - prev
            parts.append(nt)
            spans.append((pos, pos + len(nt)))
            pos += len(nt)
            prev = cut
        parts.append(hay[prev:])
        pos += len(hay) - prev
        answer_parts, qa_spans = [np.zeros(pos, bool)], []
        for qt, at in zip(q_tok, a_tok):
            parts += [qt, at]
            qa_spans.append((pos, pos + len(qt), pos + len(qt) + len(at)))
            answer_parts += [np.zeros(len(qt), bool), np.ones(len(at), bool)]
            pos += len(qt) + len(at)
        parts.append(np.array([self.vocab.eot], np.int32))
        answer_parts.append(np.ones(1, bool))  # stopping after the answer is part of answering
        ids = np.concatenate(parts).astype(np.int32)
        if rng.random() < 0.5 if bos is None else bos:
            ids[0] = self.vocab.eot  # replaces a haystack token: the length stays exact
        answer = np.concatenate(answer_parts)
        for _, _, end in qa_spans[:-1]:
            answer[end] = True  # the newline that ends an answer before the next question
        meta.update(source=source, depths=[float(d) for d in depths], qa_format=fmt, split=split)
        return Sample(ids, answer, task, spans, needles, qas, qa_spans, meta)


def make_batch(maker: SampleMaker, lm: TokenStream, batch: int, length: int, rng: np.random.Generator,
               retrieval_fraction: float, mix: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` rows of ``length + 1`` ids and answer masks: retrieval samples, then plain text windows."""
    mix = mix or TRAIN_MIX
    tasks, probs = list(mix), np.array(list(mix.values()), float)
    n_ret = int(round(batch * retrieval_fraction))
    ids = np.empty((batch, length + 1), np.int32)
    ans = np.zeros((batch, length + 1), bool)
    for i in range(n_ret):
        task = tasks[int(rng.choice(len(tasks), p=probs / probs.sum()))]
        try:
            s = maker.make(task, length, rng)
        except InputError:
            s = maker.make("single", length, rng)
        ids[i], ans[i] = s.ids, s.answer
    for i in range(n_ret, batch):
        start = int(rng.integers(0, len(lm) - length - 1))
        ids[i] = lm.ids[start : start + length + 1]
    return ids, ans
