"""``memcim sweep``: run a grid or random sweep of any task or memcim command, locally or on Dask.

Examples
--------
    memcim sweep noise.toml                          # local process pool, one worker per CPU
    memcim sweep noise.toml --workers 2 --store runs/noise.sqlite
    memcim sweep noise.toml --resume                 # after an interruption: finished points are kept
    memcim sweep noise.toml --scheduler tcp://head-node:8786
"""
from __future__ import annotations

import sys
from pathlib import Path

DESCRIPTION = """Run SPEC.toml: every point of its [grid] (cartesian product) or [random] sample, crossed with
its seeds, each calling a task (a Python function) or a memcim CLI command with --json. Results go to
an SQLite store, one committed row per point (config, seed, code version, wall time, status, error,
results), plus a Parquet copy at the end; pandas, polars and DuckDB read either. A point that raises is
recorded and the sweep goes on; --resume skips every recorded point. See docs/sweep.md."""


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a parameter sweep (local process pool or a Dask cluster)",
                       description=DESCRIPTION)
    p.add_argument("spec", metavar="SPEC.toml", help="sweep specification")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this existing Dask distributed scheduler instead of locally")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: number of CPUs; 0 runs in this process)")
    p.add_argument("--store", metavar="PATH.sqlite",
                   help="result store (default: sweep.store from the spec, else SPEC.sqlite next to the spec)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --store, skipping recorded points")
    p.add_argument("--retry-failed", action="store_true", help="with --resume, run failed points again")
    p.add_argument("--overwrite", action="store_true", help="delete an existing --store first")
    p.add_argument("--limit", type=int, default=None, help="run at most N of the remaining points, then stop")
    p.add_argument("--connect-timeout", type=float, default=5.0,
                   help="seconds to wait for the Dask scheduler (default 5)")
    p.add_argument("--no-parquet", action="store_true", help="do not write the Parquet copy of the store")
    p.add_argument("--dry-run", action="store_true", help="validate the spec and list the points; run nothing")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print one JSON object (the summary) to stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.io import dumps
    from memcim.sweep.engine import run_sweep
    from memcim.sweep.spec import parse_spec
    from memcim.sweep.store import SweepStore, check_store_path, export_parquet

    if args.connect_timeout is not None and not 0 < args.connect_timeout <= 600:
        raise ValueError(f"--connect-timeout: {args.connect_timeout} is not allowed; must be in (0, 600] seconds")
    spec = parse_spec(args.spec)
    store = check_store_path(args.store or spec.store or Path(args.spec).with_suffix(".sqlite"))
    if args.dry_run:
        pts = [{"index": p.index, "point_id": p.point_id, "seed": p.seed, **p.params} for p in spec.points]
        out = {"sweep": spec.name, "kind": spec.kind, "target": spec.target, "points": len(pts),
               "parameters": list(spec.params), "store": str(store), "list": pts}
        if args.json:
            print(dumps(out))
        else:
            print(f"{spec.name}: {len(pts)} points of {spec.kind} {spec.target!r} over "
                  f"{', '.join(spec.params)}{' x seeds' if spec.seed_arg else ''} -> {store}")
        return 0
    summary = None
    try:
        summary = run_sweep(spec, store, workers=args.workers, scheduler=args.scheduler, resume=args.resume,
                            retry_failed=args.retry_failed, overwrite=args.overwrite, limit=args.limit,
                            progress=True if args.progress else None, connect_timeout=args.connect_timeout)
    except KeyboardInterrupt:
        with SweepStore(store) as st:
            n = st.count()
        print(f"memcim sweep: interrupted; {n} finished point(s) are saved in {store}; "
              "run the same command with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if not args.no_parquet and store.exists():
            try:
                summary_pq = export_parquet(store)
                if summary is not None:
                    summary["parquet"] = str(summary_pq)
            except Exception as e:  # noqa: BLE001 - the SQLite store is the record; the copy is a convenience
                print(f"memcim sweep: warning: could not write the Parquet copy ({e})", file=sys.stderr)
    if args.json:
        print(dumps(summary))
    else:
        print(f"{spec.name}: {summary['ran']} point(s) run ({summary['ok']} ok, {summary['failed']} failed), "
              f"{summary['skipped']} already done, {summary['remaining']} remaining; "
              f"{summary['wall_s']:.1f} s on {summary['engine']} -> {summary['store']}")
    return 0 if summary["failed"] == 0 else 1
