"""Docs that match the code (issue 22): every ``advdim ...`` command of README.md and docs/*.md parses.

Commands in code blocks (fenced or indented) are parsed by the CLI itself without running:
Click's ``make_context`` checks the subcommand, every option, the arguments and each value's type
(an unknown option, a missing argument or ``--sizes abc`` where an integer is due fails here).
A synopsis (``[--sizes 8,16]``, ``first-order|dimension``, ``...``) and commands quoted inline in
the prose are checked by name: the subcommand and every option named must exist.  Two numbers the
docs quote are recomputed: the torch-init slope of docs/property-testing.md and the wide-limit
value the README quotes for ``advdim theory``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from advdim.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a command line: optional ``VAR=value`` and ``time`` prefixes, ``advdim`` or a path to it
COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:time\s+)?(?:\S*/)?advdim(?:\s+(.*))?$")
TOP = typer.main.get_command(app)


def code_blocks(text: str) -> list[list[str]]:
    """The lines of every fenced (```, ~~~) and indented (4 spaces after a blank line) code block."""
    lines = text.splitlines()
    blocks: list[list[str]] = []
    i, prev_blank = 0, True
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*(```|~~~)", line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence.group(1))),
                       len(lines))
            blocks.append(lines[i + 1:end])
            i, prev_blank = end + 1, True
            continue
        if prev_blank and line.startswith("    ") and line.strip():
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            blocks.append(block)
            continue
        prev_blank = not line.strip()
        i += 1
    return blocks


def block_commands(block: list[str]) -> list[str]:
    """The ``advdim`` command lines of a block, continuation lines (``\\``) joined."""
    out = []
    i = 0
    while i < len(block):
        line = block[i]
        while line.rstrip().endswith("\\") and i + 1 < len(block):
            i += 1
            line = line.rstrip()[:-1] + " " + block[i].strip()
        i += 1
        text = re.sub(r"^\$\s+", "", line.strip())
        if COMMAND.match(text):
            out.append(text)
    return out


def doc_commands() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(block commands, inline commands)``, each a list of ``(document, command line)``."""
    blocks, inline = [], []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        blocks += [(doc.name, c) for b in code_blocks(text) for c in block_commands(b)]
        prose = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
        inline += [(doc.name, m.group(1).strip()) for m in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", prose)
                   if COMMAND.match(m.group(1).strip())]
    return blocks, inline


def words_of(line: str) -> list[str]:
    """The arguments after ``advdim``, without a trailing comment or what follows a shell operator."""
    m = COMMAND.match(line)
    assert m is not None
    words = shlex.split(m.group(1) or "", comments=True)
    for op in ("&", "&&", "|", "||", ";", ">", ">>", "2>"):
        if op in words:
            words = words[:words.index(op)]
    return words


def _rest(ctx: Any) -> list[str]:
    return [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []), *ctx.args]


def dry_parse(words: list[str]) -> None:
    """Parse ``advdim WORDS`` as the CLI would, down to the leaf command, without running it; raises
    Click's usage errors (unknown command or option, missing argument, bad value)."""
    ctx = TOP.make_context("advdim", list(words))
    cmd, rest = TOP, _rest(ctx)
    while hasattr(cmd, "commands"):
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        assert cmd is not None and name is not None
        ctx = cmd.make_context(name, rest, parent=ctx)
        rest = _rest(ctx)


def _options(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def missing_names(words: list[str]) -> list[str]:
    """What a synopsis names that the CLI lacks: a subcommand, or an option of the command named."""
    cmd, i = TOP, 0
    while hasattr(cmd, "commands") and i < len(words) and not words[i].startswith("-") and words[i] != "...":
        alternatives = words[i].split("|")
        i += 1
        found = [cmd.commands.get(a) for a in alternatives]
        if any(c is None for c in found):
            return [f"no command {words[i - 1]!r} under {cmd.name!r}"]
        cmd = found[0]
    missing = []
    for word in words[i:]:
        for part in word.strip("[]").split("|"):
            m = re.match(r"^(--?[A-Za-z][\w-]*)(=.*)?$", part)
            if m and m.group(1) not in _options(cmd):
                missing.append(f"advdim {cmd.name} has no option {m.group(1)}")
    return missing


def is_synopsis(words: list[str]) -> bool:
    return any(w.startswith("[") or w == "..." or re.search(r"\w\|\w", w) for w in words)


BLOCKS, INLINE = doc_commands()


def test_the_docs_hold_commands() -> None:
    assert len(BLOCKS) >= 30 and len(INLINE) >= 30
    assert {doc for doc, _ in BLOCKS} >= {"README.md", "user-guide.md", "empirical.md"}


@pytest.mark.parametrize(("doc", "line"), BLOCKS, ids=[f"{d}:{k}" for k, (d, _) in enumerate(BLOCKS)])
def test_every_command_in_a_code_block_parses(doc: str, line: str) -> None:
    words = words_of(line)
    if is_synopsis(words):
        assert not missing_names(words), f"{doc}: {line}"
        return
    try:
        dry_parse(words)
    except Exception as e:  # Click's usage errors; Exit is --help
        if type(e).__name__ != "Exit":
            pytest.fail(f"{doc}: `{line}` does not parse: {type(e).__name__}: {e}")


@pytest.mark.parametrize(("doc", "line"), INLINE, ids=[f"{d}:{k}" for k, (d, _) in enumerate(INLINE)])
def test_every_command_quoted_in_the_prose_names_what_exists(doc: str, line: str) -> None:
    assert not missing_names(words_of(line)), f"{doc}: `{line}`"


@pytest.mark.parametrize("bad", [
    "advdim simulate --nope 3", "advdim simulat -f dense", "advdim theory", "advdim arch show x --size abc",
    "advdim theory dense --sizes 8 --json --wide-law",
])
def test_the_checker_rejects_a_stale_command(bad: str) -> None:
    words = words_of(bad)
    with pytest.raises(Exception) as info:
        dry_parse(words)
    assert type(info.value).__name__ in ("NoSuchOption", "UsageError", "MissingParameter", "BadParameter")
    assert missing_names(["simulate", "--nope"]) and missing_names(["nope"]) and not missing_names(["--help"])


def test_the_property_testing_slope_is_the_one_measured() -> None:
    """docs/property-testing.md quotes the slope its own call measures: rerun the call, compare."""
    from advdim.testing import assert_law

    text = (ROOT / "docs" / "property-testing.md").read_text(encoding="utf-8")
    m = re.search(r'(assert_law\("strided\(channels=8,final=2\)".*?\))\n# seed 0 \(the default\): measured '
                  r"(-?\d+\.\d+)", text)
    assert m, "the documented call and its measured slope"
    with pytest.raises(AssertionError) as info:
        assert_law("strided(channels=8,final=2)", q=(1,), sizes=(8, 16, 32), init="torch", law_init="he")
    assert m.group(1) == 'assert_law("strided(channels=8,final=2)", q=(1,), sizes=(8, 16, 32), init="torch", ' \
                         'law_init="he")'
    measured = float(re.search(r"measured (-?\d+\.\d+)", str(info.value)).group(1))  # type: ignore[union-attr]
    assert measured == pytest.approx(float(m.group(2)), abs=0.01)


def test_the_readme_theory_value_is_the_wide_limit(capsys: pytest.CaptureFixture[str]) -> None:
    """The README quotes the wide-limit E||d_x f||_2^2 that ``advdim theory`` prints first for its spec."""
    import json

    from advdim.cli import main

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r'advdim theory "(3x8x8 > conv\(64\)[^"]*)" --sizes 8,16,32\n#.*?wide-limit '
                  r"E\|\|d_x f\|\|_2\^2 \((\d\.\d+),", text)
    assert m, "the README's wide-limit example"
    assert main(["theory", m.group(1), "--sizes", "8", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)["best"]["grad_sq_norm"]["8"]
    assert best["level"] == "wide-limit" and round(best["value"], 4) == float(m.group(2))


def test_every_option_quoted_in_the_prose_exists() -> None:
    """An option quoted on its own (`--draws`, `--input-shape 3,32,32`) is one of advdim's commands
    or of a tool in scripts/ (their ``add_argument`` options)."""
    known: set[str] = {"--help"}

    def walk(cmd: Any) -> None:
        known.update(_options(cmd))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(TOP)
    for script in (ROOT / "scripts").glob("*.py"):
        known.update(re.findall(r"add_argument\(\s*\"(--[a-z][\w-]*)\"", script.read_text(encoding="utf-8")))
    stale = [f"{doc.name}: {m.group(1)}" for doc in DOCS for m in re.finditer(r"`(--[a-z][\w-]*)",
                                                                              doc.read_text(encoding="utf-8"))
             if m.group(1) not in known]
    assert not stale, stale

