"""The ``memcim`` command line.

Subcommands live in :mod:`memcim.commands`: every module there that defines
``register(subparsers)`` is discovered and added, so a new command is one new file.

A user mistake (a ``ValueError``, ``TypeError`` or ``OSError`` raised while checking input)
prints one line, ``memcim <command>: error: <message>``, and exits with status 2: never a
traceback.
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


def build_parser() -> argparse.ArgumentParser:
    from memcim import __version__, commands

    parser = _Parser(prog="memcim", description="Analog in-memory computing on memristor crossbars: "
                     "map, simulate, predict and optimize.")
    parser.add_argument("--version", action="version", version=f"memcim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"memcim.commands.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"memcim {args.command}"
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    return 0 if rc is None else int(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
