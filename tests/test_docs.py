"""The docs are true: every Python snippet in README.md and docs/*.md runs, and every quoted
``memcim`` command exists, uses the current vocabulary (no old alias) and parses.

A fenced ``bash``/``sh``/``console`` line is a whole command: it must parse completely. An inline
code span (`memcim evaluate --chips`) may be a fragment: its subcommand must exist and each of its
flags must belong to that subcommand. A Python block preceded by ``<!-- skip-test: reason -->``
is not run (the reason is printed in the test id). A fenced block without a language counts as
shell when a line of it starts with ``memcim``. Shell redirections (``> hw.toml``) are not part of
the command.

The one place an old form may be quoted is the first column of a table under a heading "Old names"
(docs/cli.md's old -> new table): there the old command's first word must still be accepted (an
alias, or a current command), and the new form beside it is checked like any other command.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")


def _blocks(path: Path):
    """(language, first line number, text, skip reason) of every fenced block."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            lang, start, body = m.group(1), i + 1, []
            skip = None
            prev = lines[i - 1].strip() if i else ""
            sm = re.match(r"<!--\s*skip-test:\s*(.*?)\s*-->", prev)
            if sm:
                skip = sm.group(1)
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((lang, start + 1, "\n".join(body), skip))
        i += 1
    return out


REDIRECT = re.compile(r"\s+(?:\d?>>?|<)\s*(?:&\d|\S+)")


def _shell_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    cmds = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        for part in re.split(r"\s*(?:&&|;|\|\|)\s*", line):
            part = part.strip()
            for prefix in (".venv/bin/memcim ", "memcim "):
                if part.startswith(prefix):
                    cmd = part[len(prefix):].split(" #")[0].split(" | ")[0].strip()
                    cmds.append("memcim " + REDIRECT.sub("", " " + cmd).strip())
    return cmds


INLINE = re.compile(r"`((?:\.venv/bin/)?memcim [^`]+)`")


def _inline_commands(text: str) -> list[tuple[str, bool]]:
    """(command, quoted as an old form) of every inline code span naming ``memcim``."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    out, old_section = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            old_section = line.lstrip("#").strip().lower() == "old names"
        if old_section and line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            if len(cells) >= 2:
                out += [(m.strip(), True) for m in INLINE.findall(cells[0])]
                out += [(m.strip(), False) for c in cells[1:] for m in INLINE.findall(c)]
                continue
        out += [(m.strip(), False) for m in INLINE.findall(line)]
    return out


def _is_shell(lang: str, body: str) -> bool:
    if lang in ("bash", "sh", "console", "shell"):
        return True
    return lang == "" and any(
        ln.strip().removeprefix("$ ").startswith(("memcim ", ".venv/bin/memcim ")) for ln in body.splitlines())


def _python_cases():
    """One case per document: its Python blocks run in order in one namespace, as a reader would."""
    for doc in DOCS:
        blocks = [(line, body, skip) for lang, line, body, skip in _blocks(doc) if lang == "python"]
        if blocks:
            yield pytest.param(blocks, id=str(doc.relative_to(ROOT)))


def _command_cases():
    for doc in DOCS:
        text = doc.read_text()
        for lang, line, body, _ in _blocks(doc):
            if _is_shell(lang, body):
                for c in _shell_commands(body):
                    yield pytest.param(c, True, False, id=f"{doc.relative_to(ROOT)}:{line}:{c[:60]}")
        for c, old in _inline_commands(text):
            tag = "old" if old else "inline"
            yield pytest.param(c.replace(".venv/bin/", ""), False, old, id=f"{doc.relative_to(ROOT)}:{tag}:{c[:60]}")


def _leaf(parser, words):
    """Walk subcommands along ``words``; return (leaf parser, remaining tokens)."""
    import argparse

    p, rest = parser, list(words)
    while True:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not rest or rest[0] not in subs[0].choices:
            return p, rest
        p, rest = subs[0].choices[rest[0]], rest[1:]


@pytest.mark.parametrize("command,complete,old", list(_command_cases()))
def test_quoted_command_exists_and_parses(command, complete, old):
    from memcim.cli import ALIASES, build_parser

    try:
        tokens = [t for t in shlex.split(command.replace("…", "..."))[1:] if t != "..."]
    except ValueError:
        tokens = command.split()[1:]
    if not tokens or tokens[0].startswith(("-", "<")) or tokens[0].endswith(":"):
        return  # `memcim --version`, or a quoted error line `memcim <command>: error: ...`
    # placeholders such as {fig4,fig7} or fig2|fig3 stand for one positional word
    tokens = [t for t in tokens if not (t.startswith(("{", "<", "[")) or ("|" in t and not t.startswith("-")))]
    if old:  # the old column of an "Old names" table: the old name must still be accepted
        parser = build_parser()
        leaf, _ = _leaf(parser, tokens)
        assert tokens[0] in ALIASES or leaf is not parser, f"{command!r}: the old name is no longer accepted"
        return
    assert tokens[0] not in ALIASES, f"{command!r} uses the old name {tokens[0]!r}; use the new form"
    parser = build_parser()
    leaf, rest = _leaf(parser, tokens)
    assert leaf is not parser, f"{command!r}: no such command"
    options = set(leaf._option_string_actions)
    for t in rest:
        if t.startswith("--"):
            assert t.split("=")[0] in options, f"{command!r}: {leaf.prog} has no flag {t.split('=')[0]}"
    if complete and not any(t in ("-h", "--help") for t in tokens):
        try:
            parser.parse_args(tokens)
        except SystemExit as e:
            pytest.fail(f"{command!r} does not parse (exit {e.code})")


@pytest.mark.parametrize("blocks", list(_python_cases()))
def test_python_snippets_run(blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_snippet__"}
    for line, code, skip in blocks:
        if skip:
            continue
        try:
            exec(compile(code, f"<snippet at line {line}>", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - report which block failed
            pytest.fail(f"the snippet at line {line} fails: {type(e).__name__}: {e}")


def test_docs_found():
    assert len(DOCS) >= 5 and sum(1 for _ in _command_cases()) > 20
