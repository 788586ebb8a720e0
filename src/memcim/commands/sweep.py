"""``memcim sweep run|plot``: run a grid or random sweep of any registered task, locally or on Dask,
and plot its store.

Examples
--------
    memcim sweep run noise.toml                      # local process pool, one worker per CPU, 1 thread each
    memcim sweep run noise.toml --workers 2 --store runs/noise.sqlite
    memcim sweep run noise.toml --resume             # after an interruption: finished points are kept
    memcim sweep run noise.toml --scheduler tcp://head-node:8786
    memcim sweep plot noise.sqlite --x device.prog_sigma_rel --y snr_db --group adc.bits --out plots/

``memcim sweep SPEC`` and ``memcim plot STORE`` are the old forms (aliases).
"""
from __future__ import annotations

import sys
from pathlib import Path

RUN_DESCRIPTION = """Run SPEC.toml: every point of its [grid] (cartesian product) or [random] sample, crossed with its
seeds, each calling a registered task (simulate, evaluate, predict, a paper figure such as 002/fig9a)
directly. Results go to an SQLite store, one committed row per point (config, seed, code version, wall
time, status, error, every number of the result as a column), plus a Parquet copy at the end. A point
that raises, or whose result cannot be stored, is recorded as an error and the sweep goes on (exit
status 1 at the end); --resume skips every recorded point. See docs/sweep.md."""

PLOT_DESCRIPTION = """Plot column Y against column X of a sweep store (.sqlite, or its .parquet copy), one line per
value of --group. Rows with the same group and X (seeds, other parameters) are averaged; error bars are
one standard error of that mean. Only points with status 'ok' are drawn. Writes <name>.png and
<name>.json (the plotted means, standard errors and counts) into --out DIR."""


def register(sub) -> None:
    from memcim.commands._shared import add_out

    p = sub.add_parser("sweep", help="run a parameter sweep (local process pool or a Dask cluster) and plot it",
                       description="Sweeps over any registered task: `memcim sweep run SPEC.toml` and "
                                   "`memcim sweep plot STORE`. See docs/sweep.md.")
    ss = p.add_subparsers(dest="sweep_command", metavar="run|plot", parser_class=type(p))

    r = ss.add_parser("run", help="run a sweep spec", description=RUN_DESCRIPTION)
    r.add_argument("spec", metavar="SPEC.toml", help="sweep specification")
    r.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this existing Dask distributed scheduler instead of locally")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: number of CPUs; 0 runs in this process)")
    r.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                   help="torch and BLAS threads of each worker process (default 1; 0: torch's default)")
    r.add_argument("--store", metavar="PATH.sqlite",
                   help="result store (default: sweep.store from the spec, else SPEC.sqlite next to the spec)")
    r.add_argument("--resume", action="store_true", help="continue the sweep in --store, skipping recorded points")
    r.add_argument("--retry-failed", action="store_true", help="with --resume, run failed points again")
    r.add_argument("--overwrite", action="store_true", help="delete an existing --store first")
    r.add_argument("--limit", type=int, default=None, metavar="N",
                   help="run at most N of the remaining points, then stop (with --dry-run: list N points)")
    r.add_argument("--max-points", type=int, default=None, metavar="N",
                   help="refuse a spec of more than N points (default 1000000), counted before any is made")
    r.add_argument("--allow-import", action="store_true",
                   help="allow task = \"package.module:function\" (runs that code); the spec must also say "
                        "allow_import = true")
    r.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                   help="allow task = \"MODULE:function\" (or a submodule of MODULE) without --allow-import; "
                        "repeatable")
    r.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for the Dask scheduler (default 5)")
    r.add_argument("--no-parquet", action="store_true", help="do not write the Parquet copy of the store")
    r.add_argument("--dry-run", action="store_true",
                   help="validate the spec, count the points and list the first ones (--limit, default 10); run nothing")
    r.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    r.add_argument("--json", action="store_true", help="print one JSON object (the summary) to stdout")
    r.set_defaults(func=run)

    q = ss.add_parser("plot", help="plot two columns of a sweep store, grouped by a third",
                      description=PLOT_DESCRIPTION)
    q.add_argument("store", metavar="STORE", help="sweep store (.sqlite / .db) or its .parquet copy")
    q.add_argument("--x", required=True, metavar="COL", help="column on the horizontal axis")
    q.add_argument("--y", required=True, metavar="COL", help="numeric column on the vertical axis")
    q.add_argument("--group", metavar="COL", help="one line per value of this column")
    q.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="keep only rows with COL equal to VALUE (repeatable)")
    q.add_argument("--logx", action="store_true", help="logarithmic x axis")
    q.add_argument("--logy", action="store_true", help="logarithmic y axis")
    add_out(q, what="the plot (<store>_<y>_vs_<x>.png) and its data; default: the store's directory")
    q.set_defaults(func=plot)


def run(args) -> int:
    from memcim import validate
    from memcim.io import dumps
    from memcim.sweep.engine import run_sweep
    from memcim.sweep.spec import MAX_POINTS, parse_spec
    from memcim.sweep.store import SweepStore, check_store_path, export_parquet

    if args.connect_timeout is not None and not 0 < args.connect_timeout <= 600:
        raise ValueError(f"--connect-timeout: {args.connect_timeout} is not allowed; must be in (0, 600] seconds")
    max_points = MAX_POINTS if args.max_points is None else validate.integer("max_points", args.max_points, lo=1)
    spec = parse_spec(args.spec, allow_import=args.allow_import, max_points=max_points,
                      allow_modules=args.allow_module)
    store = check_store_path(args.store or spec.store or Path(args.spec).with_suffix(".sqlite"), "store",
                             writable=not args.dry_run)
    if args.dry_run:
        import itertools

        shown = 10 if args.limit is None else validate.integer("limit", args.limit, lo=0)
        pts = [{"index": p.index, "point_id": p.point_id, "seed": p.seed, **p.params}
               for p in itertools.islice(spec.iter_points(), shown)]
        out = {"sweep": spec.name, "task": spec.target, "points": len(spec), "parameters": list(spec.params),
               "seeds": None if spec.seeds is None else len(spec.seeds), "store": str(store), "shown": len(pts),
               "list": pts}
        if args.json:
            print(dumps(out))
        else:
            print(f"{spec.name}: {len(spec)} points of task {spec.target!r} over "
                  f"{', '.join(spec.params)}{' x seeds' if spec.seed_arg else ''} -> {store}")
            for p in pts:
                print("  " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "point_id"))
        return 0
    summary = None
    try:
        summary = run_sweep(spec, store, workers=args.workers, threads_per_worker=args.threads_per_worker,
                            scheduler=args.scheduler, resume=args.resume, retry_failed=args.retry_failed,
                            overwrite=args.overwrite, limit=args.limit, progress=True if args.progress else None,
                            connect_timeout=args.connect_timeout)
    except KeyboardInterrupt:
        with SweepStore(store) as st:
            n = st.count()
        print(f"memcim sweep run: interrupted; {n} finished point(s) are saved in {store}; "
              "run the same command with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if not args.no_parquet and store.exists():
            try:
                summary_pq = export_parquet(store)
                if summary is not None:
                    summary["parquet"] = str(summary_pq)
            except Exception as e:  # noqa: BLE001 - the SQLite store is the record; the copy is a convenience
                print(f"memcim sweep run: warning: could not write the Parquet copy ({e})", file=sys.stderr)
    if args.json:
        print(dumps(summary))
    else:
        print(f"{spec.name}: {summary['ran']} point(s) run ({summary['ok']} ok, {summary['failed']} failed), "
              f"{summary['skipped']} already done, {summary['remaining']} remaining; "
              f"{summary['wall_s']:.1f} s on {summary['engine']} -> {summary['store']}")
    if summary["failed"]:
        print(f"memcim sweep run: {summary['failed']} of {summary['ran']} point(s) failed (recorded in the store "
              f"with status 'error'); first: {summary['first_error']}", file=sys.stderr)
        return 1
    return 0


def plot(args) -> int:
    from memcim.commands._shared import emit
    from memcim.sweep.plot import draw, plot_name, summarize_store

    result = summarize_store(args.store, x=args.x, y=args.y, group=args.group, where=args.where,
                             logx=args.logx, logy=args.logy)
    if args.out is None:
        args.out = str(Path(args.store).parent)
    name = plot_name(args.store, result["x"], result["y"])

    def text(r):
        return f"{r['y']} vs {r['x']}: {len(r['series'])} line(s), {r['points']} point(s)"

    return emit(args, name, result, plot=draw, text=text)
