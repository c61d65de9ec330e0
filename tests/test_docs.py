"""The documentation cannot rot: every page is in the site's navigation, every Python example
compiles, and every ``clayflow`` command shown but not run by the docs build is accepted by
the command's parser. (The examples marked ``exec="on"`` run in the docs build itself,
``mkdocs build --strict`` in ``.ci/run``, where a failing one is an error.) The public API
type-checks (mypy, strict on ``core`` and ``transforms``; the settings are in pyproject.toml)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from clayflow.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path, language: str) -> list[tuple[str, str]]:
    """(options, code) of each fenced block of ``language`` on ``page``."""
    return [(m.group(2), m.group(3)) for m in FENCE.finditer(page.read_text()) if m.group(1) == language]


def clayflow_commands(code: str) -> list[list[str]]:
    """The arguments of each ``clayflow`` call in shell code: continued lines joined,
    comments dropped, calls found after ``&&``, ``;``, ``|`` and ``-m clayflow``."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s#.*$", "", line)
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part)
            if "clayflow" in words and (words[0] == "clayflow" or words[words.index("clayflow") - 1] == "-m"):
                commands.append(words[words.index("clayflow") + 1 :])
    return commands


def test_the_navigation_lists_every_page_and_nothing_else():
    nav = re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE)
    assert sorted(nav) == sorted(str(p.relative_to(DOCS)) for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_examples_compile(page):
    for _, code in blocks(page, "python"):
        compile(code, str(page), "exec")


SHOWN_COMMANDS = [(page, words) for page in PAGES for options, code in blocks(page, "bash")
                  if 'exec="on"' not in options for words in clayflow_commands(code)]  # fmt: skip


@pytest.mark.parametrize("page, words", SHOWN_COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, list) else v.name)
def test_commands_shown_are_accepted(page, words, capsys):
    """Options renamed or removed since a page was written fail here, naming the page."""
    try:
        build_parser().parse_args(words)
    except SystemExit as exit_:
        pytest.fail(f"{page.relative_to(ROOT)}: clayflow {' '.join(words)}: {capsys.readouterr().err} ({exit_})")


def test_commands_found_in_shell_code():
    code = "clayflow train --steps 5 && clayflow plot runs/a  # a comment\ntorchrun --nproc_per_node 2 -m clayflow train \\\n  --data digits"
    assert clayflow_commands(code) == [["train", "--steps", "5"], ["plot", "runs/a"], ["train", "--data", "digits"]]
    assert len(SHOWN_COMMANDS) >= 5


def test_the_core_api_type_checks():
    mypy = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
