"""``memcim plot``: draw any two columns of a sweep store, one line per value of a third.

Examples
--------
    memcim plot noise.sqlite --x device.prog_sigma_rel --y snr_db --group adc.bits
    memcim plot noise.sqlite --x adc.bits --y mse --logy --where device.prog_sigma_rel=0.05 --out mse.png
"""
from __future__ import annotations

import re
from pathlib import Path

DESCRIPTION = """Plot column Y against column X of a sweep store (.sqlite, or its .parquet copy), one line per
value of --group. Rows with the same group and X (seeds, other parameters) are averaged; error bars are
one standard error of that mean. Only points with status 'ok' are drawn."""


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot two columns of a sweep store, grouped by a third",
                       description=DESCRIPTION)
    p.add_argument("store", metavar="STORE", help="sweep store (.sqlite / .db) or its .parquet copy")
    p.add_argument("--x", required=True, metavar="COL", help="column on the horizontal axis")
    p.add_argument("--y", required=True, metavar="COL", help="numeric column on the vertical axis")
    p.add_argument("--group", metavar="COL", help="one line per value of this column")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="keep only rows with COL equal to VALUE (repeatable)")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--logy", action="store_true", help="logarithmic y axis")
    p.add_argument("--out", metavar="PNG", help="output file (default: STORE_<y>_vs_<x>.png next to the store)")
    p.add_argument("--json", action="store_true", help="print the plotted means and standard errors as JSON")
    p.set_defaults(func=run)


def _column(df, name: str, opt: str) -> str:
    if name not in df.columns:
        raise ValueError(f"{opt}: no column {name!r} in the store; columns: {', '.join(map(str, df.columns))}")
    return name


def _matches(series, value: str):
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return series == (value.lower() in ("1", "true", "yes"))
    if pd.api.types.is_numeric_dtype(series):
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"--where: {value!r} is not a number, but the column is numeric") from None
        return (series - v).abs() <= 1e-12 * max(1.0, abs(v))
    return series.astype(str) == value


def aggregate(df, x: str, y: str, group: str | None) -> list[dict]:
    """Mean, standard error and count of ``y`` per (group, x), in sorted order.

    Returns
    -------
    list of ``{"group": g, "x": [...], "mean": [...], "stderr": [...], "n": [...]}``, one per group.
    """
    import numpy as np
    import pandas as pd

    keys = [group, x] if group else [x]
    g = df.groupby(keys, sort=True, dropna=False)[y]
    stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()
    out = []
    for gv, sub in (stats.groupby(group, sort=True, dropna=False) if group else [(None, stats)]):
        n = sub["n"].to_numpy()
        se = np.where(n > 1, sub["std"].to_numpy() / np.sqrt(np.maximum(n, 1)), 0.0)
        out.append({"group": gv.item() if hasattr(gv, "item") else gv, "x": sub[x].tolist(),
                    "mean": sub["mean"].tolist(), "stderr": [float(v) for v in np.nan_to_num(se)],
                    "n": [int(v) for v in n]})
    return out


def run(args) -> int:
    import matplotlib.pyplot as plt
    import pandas as pd

    from memcim.io import dumps, savefig
    from memcim.sweep.store import load_table

    df = load_table(args.store)
    x = _column(df, args.x, "--x")
    y = _column(df, args.y, "--y")
    group = _column(df, args.group, "--group") if args.group else None
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    for cond in args.where:
        col, sep, value = cond.partition("=")
        if not sep:
            raise ValueError(f"--where: {cond!r} is not allowed; write COL=VALUE")
        df = df[_matches(df[_column(df, col, "--where")], value)]
    df = df[df[y].notna()]
    if not len(df):
        raise ValueError(f"--y: no finished point has a value of {y!r} (after --where)")
    yv = pd.to_numeric(df[y], errors="coerce")
    if yv.isna().any():
        raise ValueError(f"--y: column {y!r} is not numeric (e.g. {df[y][yv.isna()].iloc[0]!r}); choose a numeric column")
    df = df.assign(**{y: yv})
    series = aggregate(df, x, y, group)
    numeric_x = pd.api.types.is_numeric_dtype(df[x])
    if (args.logx and not numeric_x) or (args.logx and (df[x] <= 0).any()):
        raise ValueError(f"--logx: column {x!r} has non-positive or non-numeric values")
    if args.logy and any(m <= 0 for s in series for m in s["mean"]):
        raise ValueError(f"--logy: column {y!r} has non-positive means")

    fig, ax = plt.subplots(figsize=(6, 4))
    cats = sorted({str(v) for s in series for v in s["x"]}) if not numeric_x else None
    for s in series:
        xs = s["x"] if numeric_x else [cats.index(str(v)) for v in s["x"]]
        label = None if group is None else f"{group} = {s['group']}"
        ax.errorbar(xs, s["mean"], yerr=s["stderr"], marker="o", ms=4, capsize=3, label=label)
    if not numeric_x:
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_xscale("log" if args.logx else "linear")
    ax.set_yscale("log" if args.logy else "linear")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    n_per = sorted({n for s in series for n in s["n"]})
    ax.set_title(f"{Path(args.store).stem}: mean of {n_per[0] if len(n_per) == 1 else f'{n_per[0]}-{n_per[-1]}'} "
                 f"point(s), bars = 1 s.e.", fontsize=9)
    if group is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    store = Path(args.store)
    out = Path(args.out) if args.out else store.with_name(
        f"{store.stem}_{re.sub(r'[^A-Za-z0-9_.-]', '_', y)}_vs_{re.sub(r'[^A-Za-z0-9_.-]', '_', x)}.png")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out: {str(out)!r} is not allowed; give a .png file")
    savefig(fig, out)
    if args.json:
        print(dumps({"store": str(store), "x": x, "y": y, "group": group, "png": str(out), "series": series}))
    else:
        print(f"wrote {out} ({len(series)} line(s), {len(df)} point(s))")
    return 0
