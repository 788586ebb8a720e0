"""Plot any two columns of a sweep store, one line per value of a third (``memcim sweep plot``).

:func:`summarize_store` computes what is drawn (a JSON-ready dict); :func:`draw` writes the PNG.
Rows with the same group and x (seeds, parameters not named) are averaged; error bars are one
standard error of that mean. Only points with status "ok" are used.

Examples
--------
>>> import pandas as pd
>>> df = pd.DataFrame({"x": [1, 1, 2], "y": [1.0, 3.0, 5.0]})
>>> aggregate(df, "x", "y", None)[0]["mean"]
[2.0, 5.0]
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def _column(df, name: str, param: str) -> str:
    if name not in df.columns:
        raise ValueError(f"{param}: no column {name!r} in the store; columns: {', '.join(map(str, df.columns))}")
    return name


def _matches(series, value: str):
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return series == (value.lower() in ("1", "true", "yes"))
    if pd.api.types.is_numeric_dtype(series):
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"where: {value!r} is not a number, but the column is numeric") from None
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


def plot_name(store: str | Path, x: str, y: str) -> str:
    """File stem of a plot: ``<store stem>_<y>_vs_<x>`` with unsafe characters replaced."""
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]", "_", s)  # noqa: E731
    return f"{Path(store).stem}_{safe(y)}_vs_{safe(x)}"


def summarize_store(store: str | Path, *, x: str, y: str, group: str | None = None, where=(),
                    logx: bool = False, logy: bool = False) -> dict[str, Any]:
    """The means and standard errors of ``y`` against ``x`` (per ``group``) in a sweep store.

    Parameters
    ----------
    store : a sweep store (``.sqlite``/``.db``) or its ``.parquet`` copy.
    x, y : column names; ``y`` must be numeric.
    group : one line per value of this column.
    where : ``"COL=VALUE"`` conditions, all of which a row must meet.
    logx, logy : logarithmic axes (checked here: values must be positive).

    Returns
    -------
    dict: ``store``, ``x``, ``y``, ``group``, ``where``, ``logx``, ``logy``, ``points`` and
    ``series`` (see :func:`aggregate`).
    """
    import pandas as pd

    from memcim.sweep.store import load_table

    df = load_table(store, "store")
    x = _column(df, x, "x")
    y = _column(df, y, "y")
    group = _column(df, group, "group") if group else None
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    for cond in where or ():
        col, sep, value = str(cond).partition("=")
        if not sep:
            raise ValueError(f"where: {cond!r} is not allowed; write COL=VALUE")
        df = df[_matches(df[_column(df, col, "where")], value)]
    df = df[df[y].notna()]
    if not len(df):
        raise ValueError(f"y: no finished point has a value of {y!r} (after where)")
    yv = pd.to_numeric(df[y], errors="coerce")
    if yv.isna().any():
        raise ValueError(f"y: column {y!r} is not numeric (e.g. {df[y][yv.isna()].iloc[0]!r}); choose a numeric column")
    df = df.assign(**{y: yv})
    series = aggregate(df, x, y, group)
    numeric_x = bool(pd.api.types.is_numeric_dtype(df[x]))
    if logx and (not numeric_x or (df[x] <= 0).any()):
        raise ValueError(f"logx: column {x!r} has non-positive or non-numeric values")
    if logy and any(m <= 0 for s in series for m in s["mean"]):
        raise ValueError(f"logy: column {y!r} has non-positive means")
    return {"store": str(store), "x": x, "y": y, "group": group, "where": list(where or ()), "logx": bool(logx),
            "logy": bool(logy), "numeric_x": numeric_x, "points": int(len(df)), "series": series}


def draw(result: dict, png: str | Path) -> Path:
    """Draw :func:`summarize_store`'s result as error-bar lines into ``png``."""
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    x, y, group, series = result["x"], result["y"], result["group"], result["series"]
    fig, ax = plt.subplots(figsize=(6, 4))
    cats = None if result["numeric_x"] else sorted({str(v) for s in series for v in s["x"]})
    for s in series:
        xs = s["x"] if cats is None else [cats.index(str(v)) for v in s["x"]]
        label = None if group is None else f"{group} = {s['group']}"
        ax.errorbar(xs, s["mean"], yerr=s["stderr"], marker="o", ms=4, capsize=3, label=label)
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_xscale("log" if result["logx"] else "linear")
    ax.set_yscale("log" if result["logy"] else "linear")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    n_per = sorted({n for s in series for n in s["n"]})
    ax.set_title(f"{Path(result['store']).stem}: mean of {n_per[0] if len(n_per) == 1 else f'{n_per[0]}-{n_per[-1]}'} "
                 f"point(s), bars = 1 s.e.", fontsize=9)
    if group is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return savefig(fig, png)
