"""The ``memcim`` command line.

Commands are grouped by noun (``memcim hw|map|simulate|evaluate|predict|optimize|train|paper|
sweep|demo``) and share one vocabulary of flags (:mod:`memcim.commands._shared`). Each module of
:mod:`memcim.commands` that defines ``register(subparsers)`` is discovered and added, so a new
command is one new file.

Every old command name stays as an alias (:data:`ALIASES`): it prints one line naming the new
form, then runs it.

A user mistake (a ``ValueError``, ``TypeError`` or ``OSError`` raised while checking input)
prints one line, ``memcim <command>: error: <message>``, and exits with status 2: never a
traceback. A library message names a parameter (``chips: ...``); the line names its flag
(``--chips: ...``) through :data:`memcim.commands._shared.FLAGS`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

os.environ.setdefault("MPLBACKEND", "Agg")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (no usage dump), exit code 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def _paper_fig(paper: str):
    def rewrite(rest: list[str]) -> list[str]:
        if rest and not rest[0].startswith("-"):
            return ["paper", "run", f"{paper}/{rest[0]}", *rest[1:]]
        return ["paper", "run", *rest]
    return rewrite


def _fixed(*new: str, drop: tuple[str, ...] = ()):
    return lambda rest: [*new, *[a for a in rest if a not in drop]]


def _lowrank(rest: list[str]) -> list[str]:
    if "--optimize" in rest:
        return ["optimize", "lowrank", *[a for a in rest if a != "--optimize"]]
    return ["predict", "lowrank", *rest]


#: old command name -> function of the remaining argv giving the new argv.
ALIASES = {
    "config": _fixed("hw"),
    "vmm": _fixed("simulate"),
    "circuit": _fixed("simulate"),
    "mse": _fixed("predict", "mse"),
    "lowrank": _lowrank,
    "optimize-gmax": _fixed("optimize", "gmax"),
    "optimize-range": _fixed("optimize", "range"),
    "irdrop-fig": _paper_fig("002"),
    "memse-fig": _paper_fig("001"),
    "lowrank-fig2": _fixed("paper", "run", "000/fig2"),
    "lowrank-hw": _fixed("paper", "run", "000/hw"),
    "lowrank-mlp": _fixed("paper", "run", "000/mlp"),
    "experiment": _paper_fig("003"),
    "reproduce": _fixed("paper", "reproduce"),
    "plot": _fixed("sweep", "plot"),
}


def rewrite_alias(argv: list[str], commands=()) -> tuple[list[str], str | None]:
    """``(new argv, one-line notice)`` for an old command name; ``(argv, None)`` otherwise
    (and for a name in ``commands``, the registered ones)."""
    if not argv or argv[0] in commands and argv[0] != "sweep":
        return argv, None
    head, rest = argv[0], list(argv[1:])
    if head == "sweep" and (not rest or rest[0] in ("run", "plot", "-h", "--help") or "sweep run" not in commands):
        return argv, None
    if head == "sweep":
        new = ["sweep", "run", *rest]
    elif head in ALIASES:
        new = ALIASES[head](rest)
    else:
        return argv, None
    shown = " ".join(new[:3] if head in ("irdrop-fig", "memse-fig", "experiment") else new[:2])
    return new, f"memcim {head} is now `memcim {shown}`; running that"


def _leaves(parser: argparse.ArgumentParser):
    """Every parser that runs a command (has no subcommands of its own)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for a in subs:
        for p in dict.fromkeys(a.choices.values()):
            yield from _leaves(p)


def build_parser() -> argparse.ArgumentParser:
    from memcim import __version__, commands

    parser = _Parser(prog="memcim", description="Analog in-memory computing on memristor crossbars: "
                     "map, simulate, predict and optimize. Every command shares --hw, --set, --chips, --seed, "
                     "--data/--inputs, --out DIR and --json (see docs/cli.md).")
    parser.add_argument("--version", action="version", version=f"memcim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"memcim.commands.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    for leaf in _leaves(parser):
        if leaf is parser:
            continue
        if "--threads" not in leaf._option_string_actions:
            leaf.add_argument("--threads", type=int, default=None, metavar="N",
                              help="torch threads in this process (default: torch's; sweep workers use 1)")
        if "--max-memory" not in leaf._option_string_actions:
            leaf.add_argument("--max-memory", default=None, metavar="SIZE",
                              help="memory this command may plan to use, e.g. 8G or 500M (default: "
                                   "MEMCIM_MAX_MEMORY, else half the available memory); larger work is "
                                   "refused before it starts")
        leaf.set_defaults(_parser=leaf)
    return parser


def _set_threads(n) -> None:
    from memcim import validate

    n = validate.integer("threads", n, lo=1, hi=1024)
    import torch

    torch.set_num_threads(n)
    os.environ["MEMCIM_THREADS"] = str(n)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"memcim: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from memcim.commands._shared import check_common, translate_error

    warnings.showwarning = _one_line_warning   # a library warning is one line, like an error

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    names = {n for a in parser._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices}
    names |= {leaf.prog.removeprefix("memcim ") for leaf in _leaves(parser)}
    argv, notice = rewrite_alias(argv, names)
    if notice:
        print(notice, file=sys.stderr)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "func", None):
        leaf = getattr(args, "_parser", parser)
        leaf.print_help()
        return 2
    leaf = args._parser
    prog = leaf.prog
    options = set(leaf._option_string_actions)
    from memcim import validate

    saved_env = os.environ.get("MEMCIM_MAX_MEMORY")
    try:
        if getattr(args, "threads", None) is not None:
            _set_threads(args.threads)
        if getattr(args, "max_memory", None) is not None:
            validate.set_memory_limit(args.max_memory)
            os.environ["MEMCIM_MAX_MEMORY"] = str(args.max_memory)   # worker processes inherit it
        check_common(args)
        rc = args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (| head) went away: not an error of the command
        return 0
    except (ValueError, TypeError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {translate_error(msg, options)}", file=sys.stderr)
        return 2
    finally:   # main() may run again in this process (tests, notebooks): the limit was this call's
        validate.set_memory_limit(None)
        if saved_env is None:
            os.environ.pop("MEMCIM_MAX_MEMORY", None)
        else:
            os.environ["MEMCIM_MAX_MEMORY"] = saved_env
    return 0 if rc is None else int(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
