"""``memcim config``: show, list and check hardware configs."""
from __future__ import annotations

import argparse

from memcim.config import HardwareConfig, preset, preset_names


def register(sub) -> None:
    p = sub.add_parser("config", help="show, list or check hardware configs",
                       description="Print a preset as TOML to start a config from, list presets, or check a file.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print a preset as TOML (or JSON)", description="Print a preset as TOML.")
    show.add_argument("preset", help="preset name (see `memcim config list`)")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(func=_show)
    lst = csub.add_parser("list", help="list the presets", description="List the bundled presets.")
    lst.set_defaults(func=_list)
    chk = csub.add_parser("check", help="validate a config file", description="Validate a .toml or .json config.")
    chk.add_argument("file")
    chk.set_defaults(func=_check)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _show(args: argparse.Namespace) -> int:
    hw = preset(args.preset)
    print(hw.to_json() if args.json else hw.to_toml(), end="" if not args.json else "\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in preset_names():
        hw = preset(name)
        print(f"{name:24s} {', '.join(hw.active_nonidealities()) or 'no non-idealities'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    hw = HardwareConfig.load(args.file)
    print(f"{args.file}: valid ({', '.join(hw.active_nonidealities()) or 'ideal'})")
    return 0
