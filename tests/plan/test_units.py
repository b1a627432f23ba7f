"""Size and context parsing, and the byte formatting used in tables."""

from __future__ import annotations

import pytest

from kvstack.errors import InputError
from kvstack.plan.units import format_bytes, format_context, parse_context, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 1024**3),
        ("80GB", 80 * 1000**3),
        ("512MiB", 512 * 1024**2),
        ("1.5TiB", 3 * 1024**4 // 2),
        ("24 gib", 24 * 1024**3),
        ("4096", 4096),
        ("100B", 100),
        (12345, 12345),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["8G", "80g", "1T"])
def test_single_letter_units_are_refused_as_ambiguous(text):
    with pytest.raises(InputError, match="ambiguous") as info:
        parse_size(text)
    assert "iB" in str(info.value) and "B (powers of 1000)" in str(info.value)


@pytest.mark.parametrize("text", ["lots", "", "0GB", "5PB", "-3GiB", 0, True])
def test_bad_sizes_raise_input_error(text):
    with pytest.raises(InputError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8K", 8192),
        ("128K", 131072),
        ("128k", 131072),
        ("1M", 1048576),
        ("4096", 4096),
        ("1.5K", 1536),
        (300, 300),
    ],
)
def test_parse_context(text, expected):
    assert parse_context(text) == expected


@pytest.mark.parametrize("text", ["1.1K", "0", "-5", "8KB", "lots", 0])
def test_bad_contexts_raise_input_error(text):
    with pytest.raises(InputError):
        parse_context(text)


def test_formatting():
    assert format_bytes(16 * 2**30) == "16.00 GiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_context(131072) == "128K"
    assert format_context(1048576) == "1M"
    assert format_context(1000) == "1,000"
