"""kvpress recipes: parsed into a press and its arguments, refused clearly when malformed or
when the peers venv is missing - before any model loads."""

import pytest

from kvstack.errors import ModelNotInstalledError, RecipeError
from kvstack.eval.peers.kvpress_bridge import is_peer, parse_peer, peers_python


@pytest.mark.parametrize(
    "text, press, kwargs",
    [
        ("kvpress:SnapKVPress:0.5", "SnapKVPress", {"compression_ratio": 0.5}),
        ("kvpress:StreamingLLMPress:keep=0.25", "StreamingLLMPress", {"compression_ratio": 0.75}),
        ("kvpress:SnapKVPress:0.75,window_size=16", "SnapKVPress", {"compression_ratio": 0.75, "window_size": 16}),
        ("kvpress:none", "none", {}),
    ],
)
def test_parse(text, press, kwargs):
    peer = parse_peer(text)
    assert (peer.press, peer.kwargs, peer.text) == (press, kwargs, text)
    assert is_peer(text) and not is_peer("snapkv:0.5")


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("kvpress:Snap:0.5", "bad kvpress recipe"),
        ("kvpress:", "bad kvpress recipe"),
        ("kvpress:SnapKVPress:1.5", "must be in [0, 1)"),
        ("kvpress:none:0.5", "takes no arguments"),
    ],
)
def test_bad_recipes_are_recipe_errors(text, phrase):
    with pytest.raises(RecipeError, match=phrase.replace("[", r"\[").replace(")", r"\)")):
        parse_peer(text)


def test_missing_peers_venv_says_make_peers(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSTACK_PEERS_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(ModelNotInstalledError, match="make peers"):
        peers_python()


def test_kvpress_is_never_imported_by_kvstack():
    import sys

    import kvstack.eval.runner  # noqa: F401 - the harness and the bridge

    assert "kvpress" not in sys.modules


def test_a_crashing_worker_is_a_peer_error_after_its_finished_rows(monkeypatch, tmp_path):
    """A worker that reports one job then dies: that row still arrives, then a typed error."""
    from kvstack.errors import PeerError
    from kvstack.eval.peers import kvpress_bridge

    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho \'{"id": "a", "status": "ok"}\'\necho boom >&2\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("KVSTACK_PEERS_PYTHON", str(fake))
    monkeypatch.setattr(kvpress_bridge, "model_reference", lambda name: {"model": name, "gguf_file": None})
    got = []
    with open(tmp_path / "log", "w") as log, pytest.raises(PeerError, match="exited with code 3"):
        for row in kvpress_bridge.run_jobs("m", "float32", [{"id": "a"}, {"id": "b"}], log=log):
            got.append(row)
    assert got == [{"id": "a", "status": "ok"}]
