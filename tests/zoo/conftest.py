"""Shared pieces for the zoo tests: the shipped tokenizer and a haystack stream of real essays."""

from __future__ import annotations

import pytest

from kvstack.zoo import SHIPPED


@pytest.fixture(scope="session")
def vocab():
    from tokenizers import Tokenizer

    from training.retrieval import VocabTables

    return VocabTables(Tokenizer.from_file(str(SHIPPED / "kvstack-retrieval" / "tokenizer.json")))


@pytest.fixture(scope="session")
def essay_stream(vocab):
    """The held-out Paul Graham essays (never trained on), tokenized end to end."""
    from kvstack.errors import ModelNotInstalledError
    from training.corpus import heldout_essays
    from training.retrieval import TokenStream

    try:
        from kvstack.eval.texts import essay, essay_names

        names = heldout_essays(essay_names())
    except ModelNotInstalledError as exc:  # pragma: no cover - make installs it
        pytest.skip(str(exc))
    return TokenStream.build(vocab, vocab.encode([essay(n) for n in names]), vocab.paragraph)
