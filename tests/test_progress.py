"""``kvstack.progress.saying``: one line of feedback around a slow phase, ended even when it fails."""

import re

import pytest

from kvstack.progress import saying


def test_a_phase_says_what_it_does_and_how_long_it_took(capsys):
    with saying("loading model"):
        pass
    assert re.fullmatch(r"loading model \.\.\. \d+\.\d s\n", capsys.readouterr().err)


def test_a_failed_phase_ends_its_line_before_the_error(capsys):
    with pytest.raises(ValueError), saying("loading model"):
        raise ValueError("boom")
    assert capsys.readouterr().err == "loading model ... failed\n"


def test_a_disabled_phase_prints_nothing(capsys):
    with saying("loading model", enabled=False):
        pass
    assert capsys.readouterr() == ("", "")
