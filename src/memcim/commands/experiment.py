"""``memcim experiment NAME``: run a registered paper experiment, print its table, save JSON + PNG.

Experiments live in :data:`EXPERIMENTS`, a dict ``name -> Experiment``. Another module adds one
with :func:`register_experiment` (or by inserting into the dict) before the CLI parses; the
runner receives the parsed options and returns a JSON-ready document.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from memcim.io import dumps, provenance, write_json


@dataclass(frozen=True)
class Experiment:
    """A runnable experiment: ``run(quick, chips, seed, epochs, quiet) -> dict``, ``format(doc) -> str``,
    optional ``plot(doc, path)``."""

    run: Callable[..., dict]
    help: str
    format: Callable[[dict], str] = lambda doc: dumps(doc)
    plot: Callable | None = None


def _convex_cim(**kw) -> dict:
    from memcim.experiments.convex_cim import run

    return run(**kw)


def _convex_cim_format(doc):
    from memcim.experiments.convex_cim import format_table

    return format_table(doc)


def _convex_cim_plot(doc, path):
    from memcim.experiments.convex_cim import plot

    plot(doc, path)


#: name -> Experiment. Add yours with :func:`register_experiment`.
EXPERIMENTS: dict[str, Experiment] = {
    "convex-cim": Experiment(_convex_cim, "paper 003: convex window/FS design and noise-aware fine-tuning on the "
                             "MNIST MLP (table + ADC sweep)", _convex_cim_format, _convex_cim_plot),
}


def register_experiment(name: str, experiment: Experiment) -> None:
    """Add an experiment under ``name`` (a ValueError if the name is taken)."""
    if name in EXPERIMENTS:
        raise ValueError(f"experiment: {name!r} is already registered")
    EXPERIMENTS[name] = experiment


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a paper experiment (table + plot)",
                       description="Run a registered experiment, print its table and save JSON + PNG. "
                                   "Experiments: " + "; ".join(f"{k}: {v.help}" for k, v in EXPERIMENTS.items()))
    p.add_argument("name", help=f"experiment name ({', '.join(EXPERIMENTS)})")
    p.add_argument("--quick", action="store_true", help="small smoke run (fewer samples, chips and epochs)")
    p.add_argument("--chips", type=int, default=None, help="chips per configuration (default 10; --quick 3)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 3; --quick 1)")
    p.add_argument("--sweep-chips", type=int, default=None, help="chips per point of a sweep (default: --chips)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--bits", default=None, help="ADC bits of the sweep, comma separated (default 2,3,4,5,6,7,8; "
                                                "'none' skips it)")
    p.add_argument("--config", default=None, help="hardware preset name or .toml/.json file (default: the "
                                                  "experiment's own preset)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--out", default=None, metavar="DIR", help="write <name>.json and <name>.png there")
    p.set_defaults(func=run)


def _bits(text):
    if text is None:
        return (2, 3, 4, 5, 6, 7, 8)
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ValueError(f"--bits: {text!r} is not allowed; give integers like 2,3,4 or 'none'") from None


def run(args: argparse.Namespace) -> int:
    if args.name not in EXPERIMENTS:
        raise ValueError(f"experiment: {args.name!r} is not known; choose one of {', '.join(EXPERIMENTS)}")
    if args.chips is not None and args.chips < 1:
        raise ValueError(f"--chips: {args.chips} is not allowed; must be >= 1")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs: {args.epochs} is not allowed; must be >= 1")
    if args.sweep_chips is not None and args.sweep_chips < 1:
        raise ValueError(f"--sweep-chips: {args.sweep_chips} is not allowed; must be >= 1")
    if args.seed < 0:
        raise ValueError(f"--seed: {args.seed} is not allowed; must be >= 0")
    exp = EXPERIMENTS[args.name]
    doc = exp.run(quick=args.quick, chips=args.chips, seed=args.seed, epochs=args.epochs,
                  sweep_bits=_bits(args.bits), config=args.config, sweep_chips=args.sweep_chips, quiet=args.json and not sys.stderr.isatty())
    doc["provenance"] = provenance(seed=args.seed)
    if args.out:
        stem = args.name.replace("-", "_")
        write_json(f"{args.out}/{stem}.json", doc)
        if exp.plot is not None:
            exp.plot(doc, f"{args.out}/{stem}.png")
    if args.json:
        print(dumps(doc))
    else:
        print(exp.format(doc))
    return 0
