"""Every command shown in README.md and docs/ runs as written.

The fenced shell blocks (bash, sh, console - where only ``$ `` lines are commands) are read
from the files themselves. Every ``kvstack`` command must parse with the real CLI parser; every
recipe shown (``--recipe``, ``--recipes``, ``recipe="..."`` in Python blocks) must parse; files a
command reads from the repository must exist; and the cheap commands run for real: ``--help``,
``recipes``, ``plan``, and ``serve`` (started on a free port, then stopped). The expensive ones
(``run``, ``eval``, ...) are run by hand before a release; their arguments are still checked here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kvstack.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell", "console", "")
TOKEN = "0123456789abcdef0123456789abcdef"


def _blocks(path: Path) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def shell_commands(path: Path) -> list[str]:
    """The command lines of a file's shell blocks, continuation lines joined, prompts removed."""
    out = []
    for lang, body in _blocks(path):
        if lang not in SHELLS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if lang == "console":
                if not line.startswith("$ "):
                    continue  # output, not a command
                line = line[2:]
            if line and not line.startswith("#"):
                out.append(line)
    return out


def argv_of(line: str) -> list[str]:
    """``shlex`` words of a command as a shell would pass them: comments, ``&`` and redirections dropped."""
    line = line.replace("$(openssl rand -hex 16)", TOKEN)
    words = shlex.split(line, comments=True)
    if words and words[-1] == "&":
        words = words[:-1]
    if ">" in words:
        words = words[: words.index(">")]
    return [os.path.expanduser(w) for w in words]


KVSTACK = [(p.relative_to(ROOT).as_posix(), line) for p in DOCS for line in shell_commands(p)
           if line.startswith("kvstack ")]
PYTHON_RECIPES = [
    (p.relative_to(ROOT).as_posix(), m)
    for p in DOCS for lang, body in _blocks(p) if lang == "python"
    for m in re.findall(r"recipe=\"([^\"]+)\"", body)
]


def _recipes(argv: list[str]) -> list[str]:
    """The recipes a command names: ``--recipe R`` and every value after ``--recipes`` up to the next option."""
    out = []
    for i, word in enumerate(argv):
        if word == "--recipe" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif word == "--recipes":
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                out.append(argv[j])
                j += 1
    return out


def test_the_docs_show_commands():
    files = {f for f, _ in KVSTACK}
    assert {"README.md", "docs/recipes.md", "docs/planner.md", "docs/wire.md", "docs/eval.md"} <= files
    assert len(KVSTACK) >= 25


@pytest.mark.parametrize("where, line", KVSTACK, ids=[f"{f}: {line[:60]}" for f, line in KVSTACK])
def test_every_kvstack_command_parses(where, line):
    argv = argv_of(line)
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        assert exc.code == 0 and "--help" in argv, f"{where}: `{line}` does not parse"
        return
    for option in ("context_file", "calibration"):
        for name in [getattr(args, option, None)] if option == "context_file" else getattr(args, option, None) or []:
            assert name is None or (ROOT / name).is_file(), f"{where}: `{line}` reads {name}, which does not exist"


RECIPES = [(f, r) for f, line in KVSTACK for r in _recipes(argv_of(line))] + PYTHON_RECIPES


def test_the_docs_show_recipes():
    shown = {r for _, r in RECIPES}
    assert {"snapkv:0.25 > int4", "keydiff:0.125,span=16 > int4", "qa:16x"} <= shown


@pytest.mark.parametrize("where, recipe", RECIPES, ids=[f"{f}: {r}" for f, r in RECIPES])
def test_every_recipe_shown_parses(where, recipe):
    from kvstack.stack import Recipe

    if recipe.startswith("kvpress:"):  # a peer's press, run in its own venv (docs/eval.md)
        return
    if "basis=" in recipe:  # names a file `kvstack calibrate` writes first: parse without loading it
        recipe = re.sub(r",?basis=[^,>\s]+", "", recipe)
    Recipe.parse(recipe)


CHEAP = [(f, line) for f, line in KVSTACK
         if argv_of(line)[1] in ("recipes", "plan") or "--help" in argv_of(line)]


@pytest.mark.parametrize("where, line", CHEAP, ids=[f"{f}: {line[:60]}" for f, line in CHEAP])
def test_cheap_commands_run_as_written(where, line, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = argv_of(line)
    try:
        code = main(argv[1:])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert code == 0, f"{where}: `{line}` exited {code}: {captured.err[-500:]}"
    assert captured.out.strip()


SUBCOMMANDS = sorted({argv_of(line)[1] for _, line in KVSTACK if not argv_of(line)[1].startswith("-")})


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_command_the_docs_use(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and f"usage: kvstack {command}" in capsys.readouterr().out


SERVE = [(f, line) for f, line in KVSTACK if argv_of(line)[1] == "serve" and "redis://" not in line]


@pytest.mark.parametrize("where, line", SERVE, ids=[f"{f}: {line[:60]}" for f, line in SERVE])
def test_serve_commands_start_and_stop(where, line, tmp_path):
    # as written, except on a free port (another test or program may hold the one shown)
    argv = [sys.executable, "-m", "kvstack.cli", *argv_of(line)[1:], "--port", "0"]
    env = {**os.environ, "KVSTACK_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in first, f"{where}: `{line}`: {proc.stderr.read()[-800:]}"
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode in (0, -15)


def test_python_files_the_docs_run_exist():
    for path in DOCS:
        for line in shell_commands(path):
            words = argv_of(line)
            if words and words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
                assert (ROOT / words[1]).is_file(), f"{path.name}: `{line}` runs a missing file"
