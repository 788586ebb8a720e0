"""``memcim device fit``: turn a CSV of your own device measurements into a device config.

Examples
--------
    memcim device fit measurements.csv --out fitted
    memcim device fit measurements.csv --g-max 1e-4 --levels 8 --json
    memcim simulate --matrix W.npy --hw fitted/device.toml

The CSV columns, the fits and the files are described in docs/device_fit.md and
:mod:`memcim.hardware.fit`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from memcim.commands import _shared as sh


def register(sub) -> None:
    p = sub.add_parser("device", help="fit a device model to your own measurements (device fit)",
                       description="Devices: fit programming noise, stuck fractions, drift and read noise to "
                                   "a CSV of your own measurements.")
    p.set_defaults(_parser=p)
    dsub = p.add_subparsers(dest="device_command", metavar="ACTION", parser_class=type(p))
    f = dsub.add_parser("fit", help="fit a device TOML to a CSV of conductance measurements",
                        description="Fit a device to DATA.csv (columns target, measured and optionally time, "
                                    "read, device; see docs/device_fit.md): per-level programming sigma, or a "
                                    "polynomial in G/g_max; stuck fractions; the drift-exponent distribution; "
                                    "the 1/f read-noise model. --out DIR writes device.toml (a config to give to "
                                    "--hw), device_fit.json and device_fit.png.")
    f.add_argument("data", metavar="DATA.csv", help="the measurements (a CSV with a header row)")
    f.add_argument("--g-max", type=float, default=None, metavar="S",
                   help="the window's top [S] (default: level targets, the line through the level centres at "
                        "the top level; conductance targets, the largest target)")
    f.add_argument("--levels", type=int, default=None, metavar="N",
                   help="the device's number of levels (default: level targets, the largest level + 1; "
                        "conductance targets, continuous)")
    f.add_argument("--degree", default="2", metavar="N|auto",
                   help="degree of the programming-sigma polynomial for conductance targets, or auto "
                        "(chosen by BIC among 0..4) (default 2)")
    f.add_argument("--t-read", type=float, default=None, metavar="S",
                   help="duration of one read [s] in the 1/f model (default 2.5e-7)")
    sh.add_out(f, what="device.toml, device_fit")
    f.set_defaults(func=_fit)


def _degree(text: str) -> int | None:
    if str(text).strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"degree: {text!r} is not allowed; give an integer in 0..7 or auto") from None


def _text(fit) -> str:
    d = fit.device
    lines = [f"fitted {fit.input['devices']} devices ({fit.input['rows']} rows, targets: {fit.input['targets']}); "
             f"g_min = {d.g_min:.4g} S, g_max = {d.g_max:.4g} S" + (f", {d.levels} levels" if d.levels else "")]
    for name, p in fit.parameters.items():
        if name in ("g_min", "g_max"):
            continue
        v, se = p["value"], p["se"]
        if isinstance(v, list):
            shown = ", ".join(f"{x:.3g}" for x in v[:8]) + (", ..." if len(v) > 8 else "")
            lines.append(f"  {name:20s} [{shown}]")
        else:
            lines.append(f"  {name:20s} {v:.4g}" + (f" +- {se:.2g}" if se is not None else ""))
    for k, m in fit.models.items():
        lines.append(f"  model {k}: {m}")
    for n in fit.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def _fit(args: argparse.Namespace) -> int:
    from memcim import validate
    from memcim.hardware.fit import fit_device, plot_fit
    from memcim.io import provenance

    path = validate.existing_file("data", args.data)
    fit = fit_device(path, g_max=args.g_max, levels=args.levels, degree=_degree(args.degree), t_read=args.t_read)
    result = {**fit.to_dict(), "data": str(path),
              "provenance": provenance(None, command="device fit", g_max=args.g_max, levels=args.levels,
                                       degree=args.degree, t_read=args.t_read)}
    text = _text(fit)
    if args.out:
        toml = Path(args.out) / "device.toml"
        toml.write_text(fit.to_toml(name=f"fitted-{path.stem}"))
        result["device_toml"] = str(toml)
        text += f"\nwrote {toml}"
    return sh.emit(args, "device_fit", result, plot=lambda _r, png: plot_fit(fit, png), text=lambda _r: text)
