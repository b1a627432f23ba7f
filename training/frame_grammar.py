"""Procedurally generated needle and question frames for training the retrieval model.

Why: the first model scored 93% on training phrasings but 62% on unseen ones at 1k tokens. With a
few dozen hand-written frames the model learns *those sentences*; with thousands of frames built
from interchangeable parts (lead-ins, relations, copulas, verbs, separators, word orders) it has to
learn the thing that transfers - find the key and the attribute in the context, copy the value
beside them. The lists are drawn once, deterministically (``seed``), so training stays reproducible
and :func:`training.templates.training_templates` can still enumerate every frame.

Nothing here may come near the held-out phrasings (``templates.HELDOUT_*``) or the evaluation
harness (``kvstack/eval/tasks/vocab.py``): :data:`BANNED` lists their distinctive words, and a test
checks that no generated frame contains one.
"""

from __future__ import annotations

import numpy as np

# Distinctive words of held-out and evaluation phrasings; no generated frame may contain them.
BANNED = (
    "carries", "goes by", "notes", "keep in mind", ":=", "clerk", "wrote down", "next to", "under", "fact sheet",
    "as it happens", "<", "state", "corresponds", "passage", "linked", "quick check", "search", "listed",
    "registry", "filed", "ledger", "slot", "archive", "pass key", "workshop", "town", "river", "text above",
    "the documents", "remember it",
)

LEAD_INS = (
    "Note:", "Note that", "For the record,", "Incidentally,", "Also,", "FYI:", "Reminder:", "Importantly,",
    "In addition,", "Just so you know,", "Heads up:", "Fun fact:", "PS:", "Side note:", "Apparently,",
    "To be clear,", "Officially,", "As agreed,", "Last week,", "Before we forget,", "Oh, and",
    "Mind you,", "Important:", "One more thing:", "Known fact:", "It was decided that", "Rumour has it that",
    "Everyone agrees that", "The memo confirms that", "Our records show that", "We can confirm that",
    "It is worth noting that", "Strangely enough,", "As of today,", "Since March,", "After the audit,",
)
RELATIONS = (
    "of", "for", "belonging to", "assigned to", "registered to", "issued to", "owned by", "used by",
    "held by", "recorded for", "given to", "associated with", "that belongs to", "reserved for",
    "allotted to", "on record for", "tied to", "kept by", "chosen by", "set for", "attached to",
)
COPULAS = (
    "is", "was", "is now", "has been", "reads", "equals", "is set to", "was set to", "is recorded as",
    "became", "remains", "is exactly", "turned out to be", "was confirmed as", "is given as", ":", "=", "->",
    "=>", "::", "is simply", "was changed to",
)
VALUE_FIRST_COPULAS = (
    "is", "was", "became", "remains", "serves as", "is used as", "is recorded as", "was chosen as",
    "is known as", "was issued as", "stands as", "acts as",
)
HAVE_VERBS = (
    "has", "holds", "owns", "uses", "keeps", "got", "received", "was issued", "was assigned", "was given",
    "chose", "picked", "selected", "registered", "reported", "claims", "prefers", "ended up with",
    "was allotted", "swapped to", "settled on", "inherited", "bought", "requested", "signed up with",
)
SAY_VERBS = (
    "said", "replied", "answered", "wrote", "mentioned", "explained", "added", "insisted", "confirmed",
    "whispered", "announced", "admitted", "noted", "told us",
)
SEPARATORS = (" | ", " / ", " - ", " -- ", "; ", ", ", " :: ", " => ", " ~ ", " . ", ": ", " + ")
KEY_WRAPS = ("{E}", "[{E}]", "({E})", "*{E}*", "**{E}**", "{E}:", "#{E}", "@{E}", "_{E}_")
ENDS = (".", ".", ".", "!", ";", "")

QUESTION_PREFIXES = (
    "", "", "", "Based on the context, ", "From the context, ", "According to the records, ",
    "Using the information given, ", "Given what was said, ", "From memory, ", "One question: ",
    "Now, ", "So, ", "Question for you: ", "Looking back, ", "Earlier it was mentioned - ",
)
WH = ("What", "Which value", "What exactly", "And what", "So what", "What value")
IMPERATIVES = (
    "Tell me", "Give", "Find", "Provide", "Share", "Identify", "Supply", "Show", "Write", "Print", "Say",
    "Return", "Recall", "Name", "Report", "Retrieve", "Look up", "Fetch", "Output", "Tell us", "Remind me of",
    "Please give", "Please tell me", "Spell out", "Repeat", "Quote", "Type",
)
ASK_LEADS = ("Tell me,", "Remind me,", "Do you know", "I wonder:", "Can you recall", "Please say", "I forgot:",
             "Any idea", "Can you tell me")
DO_VERBS = ("have", "hold", "use", "get", "receive", "pick", "choose", "keep", "own", "end up with", "register")
QUESTION_ENDS = ("?", "?", "?", " ?", "??", ": ?", " = ?", "=?")


def _pick(rng: np.random.Generator, items) -> str:
    return items[int(rng.integers(len(items)))]


def _needle(rng: np.random.Generator) -> str:
    form = int(rng.integers(9))
    end = _pick(rng, ENDS)
    if form == 0:
        core = f"the {{A}} {_pick(rng, RELATIONS)} {{E}} {_pick(rng, COPULAS)} {{V}}{end}"
    elif form == 1:
        core = f"{{E}}'s {{A}} {_pick(rng, COPULAS)} {{V}}{end}"
    elif form == 2:
        core = f"{{E}} {_pick(rng, HAVE_VERBS)} the {{A}} {{V}}{end}"
    elif form == 3:
        core = f"{{E}} {_pick(rng, HAVE_VERBS)} {{V}} as {_pick(rng, ('the', 'their', 'a'))} {{A}}{end}"
    elif form == 4:
        core = f"{{V}} {_pick(rng, VALUE_FIRST_COPULAS)} the {{A}} {_pick(rng, RELATIONS)} {{E}}{end}"
    elif form == 5:
        key = _pick(rng, KEY_WRAPS)
        sep1, sep2 = _pick(rng, SEPARATORS), _pick(rng, SEPARATORS)
        core = f"{key}{sep1}{{A}}{sep2}{{V}}" if rng.random() < 0.6 else f"{{A}}{sep1}{key}{sep2}{{V}}"
    elif form == 6:
        say = _pick(rng, SAY_VERBS)
        core = (f"\"The {{A}} is {{V}},\" {{E}} {say}{end or '.'}" if rng.random() < 0.5
                else f"{{E}} {say}: \"My {{A}} is {{V}}.\"")
    elif form == 7:
        core = f"when asked about the {{A}}, {{E}} {_pick(rng, SAY_VERBS)} {{V}}{end or '.'}"
    else:
        rel = _pick(rng, RELATIONS)
        core = f"{{A}} {rel} {{E}}{_pick(rng, (': ', ' = ', ' -> ', ' is '))}{{V}}{end}"
    if rng.random() < 0.4 and form not in (5,):
        core = f"{_pick(rng, LEAD_INS)} {core}"
    return core


def _question(rng: np.random.Generator) -> str:
    form = int(rng.integers(7))
    end = _pick(rng, QUESTION_ENDS)
    if form == 0:
        core = f"{_pick(rng, WH)} {_pick(rng, ('is', 'was'))} the {{A}} {_pick(rng, RELATIONS)} {{E}}{end}"
    elif form == 1:
        core = f"{_pick(rng, IMPERATIVES)} the {{A}} {_pick(rng, RELATIONS)} {{E}}{_pick(rng, ('.', '!', ':', ''))}"
    elif form == 2:
        core = f"{{E}}'s {{A}}{end}"
    elif form == 3:
        core = f"what {{A}} {_pick(rng, ('does', 'did'))} {{E}} {_pick(rng, DO_VERBS)}{end}"
    elif form == 4:
        core = f"{_pick(rng, ASK_LEADS)} what {{E}}'s {{A}} {_pick(rng, ('is', 'was'))}{end}"
    elif form == 5:
        core = f"which {{A}} {_pick(rng, ('is', 'was'))} {_pick(rng, RELATIONS)} {{E}}{end}"
    else:
        core = f"{{A}} {_pick(rng, RELATIONS)} {{E}}{end}"
    prefix = _pick(rng, QUESTION_PREFIXES)
    if prefix and core[0].isalpha() and not core.startswith(("{", "I ")):
        core = core[0].lower() + core[1:]
    return f"{prefix}{core}"


def _draw(make, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    for _ in range(n * 20):
        frame = make(rng)
        frame = frame[0].upper() + frame[1:] if frame[0].isalpha() else frame
        if not any(b in frame.lower() for b in BANNED):
            out.setdefault(frame)
        if len(out) == n:
            break
    return list(out)


def needle_frames(n: int = 3000, seed: int = 2026) -> list[str]:
    """``n`` distinct needle frames with ``{E}``, ``{A}``, ``{V}`` placeholders."""
    return _draw(_needle, n, seed)


def question_frames(n: int = 1500, seed: int = 2027) -> list[str]:
    """``n`` distinct question frames with ``{E}`` and ``{A}`` placeholders."""
    return _draw(_question, n, seed)


# Generated attributes: a modifier (a noun from the training lists or a pseudo-word drawn per sample)
# and a head noun that says what kind of value it holds.
ATTRIBUTE_HEADS = {
    "num": ("number", "id", "index", "count", "level", "score", "rank", "quota", "total", "reading", "figure",
            "tally"),
    "word": ("word", "name", "label", "tag", "colour", "motto", "title", "alias", "keyword", "nickname"),
    "code": ("key", "code", "reference", "ticket", "hash", "serial", "voucher", "token id", "checksum"),
}
