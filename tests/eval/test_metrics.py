"""Answer scoring: SQuAD normalisation, exact vs contains, any-of vs all-of answers, perplexity."""

import math

import pytest

from kvstack.eval.metrics import normalize, perplexity, score


def test_normalize_drops_case_punctuation_and_articles():
    assert normalize("The  Denver Broncos!") == "denver broncos"
    assert normalize("“An” architect,") == "architect"


@pytest.mark.parametrize(
    "prediction, answers, exact, contains",
    [
        ("Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
        ("The Denver Broncos won.", ["Denver Broncos"], 0.0, 1.0),
        ("Broncos", ["Denver Broncos"], 0.0, 0.0),
        ("an architect", ["An architect", "architect"], 1.0, 1.0),
        ("The number is 12345678", ["1234567"], 0.0, 0.0),  # a longer number is not a hit
        ("", ["x"], 0.0, 0.0),
    ],
)
def test_any_mode(prediction, answers, exact, contains):
    assert score(prediction, answers) == (exact, contains)


def test_all_mode_counts_the_share_found_and_exact_needs_nothing_else():
    golds = ["1111111", "2222222", "3333333", "4444444"]
    assert score("1111111, 2222222, 3333333 and 4444444", golds, "all") == (1.0, 1.0)
    assert score("1111111 and 3333333", golds, "all") == (0.0, 0.5)
    assert score("1111111 2222222 3333333 4444444 5555555", golds, "all") == (0.0, 1.0)


def test_perplexity_is_exp_of_mean_nll():
    assert perplexity(2 * math.log(3), 2) == pytest.approx(3.0)
    assert math.isnan(perplexity(0.0, 0))
