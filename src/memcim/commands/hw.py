"""``memcim hw``: show, list, check and compare hardware configs (formerly ``memcim config``).

Examples
--------
    memcim hw list
    memcim hw show irdrop --set device.bits=6 > mine.toml
    memcim hw check mine.toml
    memcim hw diff irdrop mine.toml --json
"""
from __future__ import annotations

import argparse
import json
from typing import Any

#: what an unset (None) key means, shown next to it by ``hw show``
UNSET = {
    "device.levels": "continuous (analog) programming",
    "device.bits": "levels given directly",
    "device.prog_sigma_table": "no per-level programming noise",
    "dac.x_range": "each input vector scaled by its own largest magnitude",
    "adc.full_scale": "set by adc.fs_mode",
    "wires.r_wire_col": "same as wires.r_wire",
}


def register(sub) -> None:
    p = sub.add_parser("hw", help="show, list, check or compare hardware configs",
                       description="Hardware configs: presets and .toml/.json files. `hw show` prints one with "
                                   "every key (each one is a --set KEY=VALUE of every command).")
    p.set_defaults(_parser=p)
    hsub = p.add_subparsers(dest="hw_command", metavar="ACTION")

    show = hsub.add_parser("show", help="print a config as TOML (every key), or JSON",
                           description="Print a preset or file, with --set overrides applied, as TOML listing every "
                                       "key (unset ones as comments). Start a config from it: "
                                       "memcim hw show generic > mine.toml")
    show.add_argument("hw", nargs="?", default=None, metavar="PRESET|FILE",
                      help="a preset name (memcim hw list) or a .toml/.json file (default generic)")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                      help="dotted override, repeatable: --set adc.bits=6 (the keys are the ones printed)")
    show.add_argument("--json", action="store_true", help="print JSON (unset keys as null) instead of TOML")
    show.set_defaults(func=_show)

    lst = hsub.add_parser("list", help="list the presets", description="List the bundled presets with the "
                          "non-idealities each switches on and its first line of description.")
    lst.add_argument("--json", action="store_true", help="print a JSON list")
    lst.set_defaults(func=_list)

    chk = hsub.add_parser("check", help="validate a config file",
                          description="Validate a .toml or .json config: every key known, every value in range. "
                                      "Prints one line; a problem is one error line and exit status 2.")
    chk.add_argument("file", metavar="FILE", help="a .toml or .json config file")
    chk.add_argument("--json", action="store_true", help="print a JSON object")
    chk.set_defaults(func=_check)

    diff = hsub.add_parser("diff", help="the keys in which two configs differ",
                           description="Compare two configs (presets or files): every key whose value differs, "
                                       "with A's value and B's value.")
    diff.add_argument("a", metavar="A", help="a preset name or a .toml/.json file")
    diff.add_argument("b", metavar="B", help="a preset name or a .toml/.json file")
    diff.add_argument("--json", action="store_true", help="print a JSON object")
    diff.set_defaults(func=_diff)


# ------------------------------------------------------------------ helpers
def flat(hw) -> dict[str, Any]:
    """Every key of ``hw`` as ``{"name": ..., "device.g_min": ..., ...}`` (unset keys as None)."""
    out: dict[str, Any] = {"name": hw.name}
    for sec, names in hw.fields().items():
        obj = getattr(hw, sec)
        for n in names:
            v = getattr(obj, n)
            out[f"{sec}.{n}"] = list(v) if isinstance(v, tuple) else v
    return out


def full_toml(hw) -> str:
    """``hw`` as TOML with every key: the set ones as values, the unset ones as comments.

    It reads back as the same config (:meth:`~memcim.config.HardwareConfig.from_toml`).
    """
    import tomli_w

    d = hw.to_dict()
    lines = [f"# hardware config {hw.name!r}: every key below can be changed with --set SECTION.KEY=VALUE",
             f"# ({', '.join(hw.active_nonidealities()) or 'no non-idealities'})",
             tomli_w.dumps({"name": hw.name}).rstrip(), ""]
    for sec, names in hw.fields().items():
        lines.append(f"[{sec}]")
        body = tomli_w.dumps(d.get(sec, {})).rstrip()
        if body:
            lines.append(body)
        obj = getattr(hw, sec)
        for n in names:
            if n in d.get(sec, {}):
                continue
            v = getattr(obj, n)
            if v is None:
                note = UNSET.get(f"{sec}.{n}", "unset")
                lines.append(f"# {n} =   (unset: {note})")
            else:  # derived: device.levels from device.bits
                lines.append(f"# {n} = {json.dumps(v)}   (follows from the keys above)")
        lines.append("")
    return "\n".join(lines)


def _load(spec: str, what: str):
    from memcim.config import resolve_config

    try:
        return resolve_config(spec)
    except ValueError as e:
        raise ValueError(f"{what}: {str(e).split(': ', 1)[-1]}") from None


# ------------------------------------------------------------------ actions
def _show(args: argparse.Namespace) -> int:
    from memcim.commands._shared import hardware
    from memcim.io import dumps

    hw = hardware(args, default="generic")
    if args.json:
        f = flat(hw)
        print(dumps({"name": hw.name, **{sec: {n: f[f"{sec}.{n}"] for n in names}
                                        for sec, names in hw.fields().items()}}))
    else:
        print(full_toml(hw), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    from importlib import resources

    from memcim.config import preset, preset_names
    from memcim.io import dumps

    rows = []
    for name in preset_names():
        hw = preset(name)
        text = resources.files("memcim.presets").joinpath(f"{name}.toml").read_text()
        head = " ".join(ln.lstrip("#").strip() for ln in text.split("name =")[0].splitlines() if ln.startswith("#"))
        first = head if len(head) <= 100 else head[:97].rsplit(" ", 1)[0].rstrip(".,;:") + "..."
        rows.append({"name": name, "nonidealities": list(hw.active_nonidealities()), "description": first})
    if args.json:
        print(dumps(rows))
    else:
        for r in rows:
            print(f"{r['name']:12s} {', '.join(r['nonidealities']) or 'no non-idealities'}")
            if r["description"]:
                print(f"{'':12s} {r['description']}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from memcim import validate
    from memcim.config import HardwareConfig
    from memcim.io import dumps

    p = validate.existing_file("file", args.file)
    try:
        hw = HardwareConfig.load(p)
    except ValueError as e:  # name the file: "mine.toml: device.levels: ... is not allowed"
        msg = str(e)
        raise ValueError(msg if msg.startswith("config: ") else f"{p}: {msg}") from None
    on = list(hw.active_nonidealities())
    if args.json:
        print(dumps({"file": str(p), "valid": True, "name": hw.name, "nonidealities": on, "reader": hw.reader}))
    else:
        print(f"{p}: valid ({', '.join(on) or 'ideal'}; {hw.reader} reader)")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from memcim.io import dumps

    a, b = _load(args.a, "a"), _load(args.b, "b")
    fa, fb = flat(a), flat(b)
    diffs = {k: {"a": fa[k], "b": fb[k]} for k in fa if fa[k] != fb[k]}
    if args.json:
        print(dumps({"a": args.a, "b": args.b, "differences": diffs}))
        return 0
    if not diffs:
        print(f"{args.a} and {args.b} are the same config")
        return 0
    show = lambda v: "(unset)" if v is None else json.dumps(v)
    w = max(len(k) for k in diffs)
    wa = max(len(args.a), *(len(show(d["a"])) for d in diffs.values()))
    print(f"{'key':{w}s}  {args.a:{wa}s}  {args.b}")
    for k, d in diffs.items():
        print(f"{k:{w}s}  {show(d['a']):{wa}s}  {show(d['b'])}")
    return 0
