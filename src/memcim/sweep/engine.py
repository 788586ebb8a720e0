"""Run a sweep: embedded in a local process pool, or on an existing Dask distributed cluster.

* **Embedded** (default): ``concurrent.futures.ProcessPoolExecutor`` with ``workers`` processes
  (started by ``forkserver`` on Linux, so that no worker inherits threads or torch state from the
  caller); ``workers=0`` runs every point in the calling process, one after the other.
* **Dask** (``scheduler="tcp://HOST:PORT"``): a ``dask.distributed.Client`` submits every point to
  an existing cluster (``dask-scheduler`` + ``dask-worker`` on the nodes). Dask does the
  scheduling, load balancing and retries; this module only submits, collects and records.

Either way the driver (this process) is the only writer of the store: each finished point is
committed as it arrives, so an interrupted sweep loses nothing that finished, and ``resume=True``
skips every point already recorded. A point that raises is recorded with ``status = "error"``
and its message; the sweep goes on.

Examples
--------
>>> from memcim.sweep.spec import parse_spec
>>> from memcim.sweep.engine import run_sweep
>>> spec = parse_spec({"sweep": {"task": "sleep", "seeds": 2}, "grid": {"value": [1.0, 2.0]}})
>>> run_sweep(spec, "/tmp/doc_sweep.sqlite", workers=0, overwrite=True)["ok"]
4
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memcim.sweep.spec import Point, SweepSpec, apply_hw, command_options, resolve_task, split_params
from memcim.sweep.store import FIXED_COLUMNS, TRAILING_COLUMNS, SweepStore, check_store_path

SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
_CLI_LOCK = threading.Lock()  # stdout capture is process-wide: one CLI point at a time per process


# ---- the worker side ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """memcim version and git commit of the code running in this process (cached)."""
    from memcim.io import provenance

    p = provenance()
    return {"memcim_version": p["memcim_version"], "git_commit": p["git_commit"]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def flatten_result(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Scalars of a (nested) dict as ``{"a.b": value}``; lists and other values are dropped.

    numpy / torch scalars become Python numbers.
    """
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 and not isinstance(v, (str, bytes)):
            v = v.item()
        if isinstance(v, dict):
            out.update(flatten_result(v, key + "."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = v
    return out


def _cli_argv(task_ref: dict, kw: dict, seed: int | None, config_path: str | None) -> list[str]:
    opts = command_options(task_ref["target"])
    argv = [task_ref["target"]]
    for name, value in kw.items():
        action = opts[name]
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if action.nargs == 0:  # flags: store_true adds the flag for true, store_false for false
            if bool(value) != (action.const is False):
                argv.append(flag)
            continue
        vals = value if isinstance(value, list) else [value]
        argv += [flag, *[str(v) for v in vals]]
    if config_path is not None:
        argv += ["--config", config_path]
    if seed is not None:
        argv += ["--seed", str(seed)]
    return argv + ["--json"]


def _run_command(task_ref: dict, kw: dict, seed: int | None, hw) -> dict:
    from memcim.cli import main

    with tempfile.TemporaryDirectory(prefix="memcim-sweep-") as tmp:
        cfg = None
        if hw is not None:
            cfg = str(Path(tmp) / "hardware.toml")
            hw.save(cfg)
        argv = _cli_argv(task_ref, kw, seed, cfg)
        out, err = io.StringIO(), io.StringIO()
        with _CLI_LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    if rc == 130:
        raise KeyboardInterrupt
    if rc != 0:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"memcim {' '.join(argv)} exited with status {rc}")
    text = out.getvalue().strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise RuntimeError(f"memcim {task_ref['target']} --json did not print one JSON object") from None
    if not isinstance(obj, dict):
        raise RuntimeError(f"memcim {task_ref['target']} --json printed {type(obj).__name__}, not an object")
    obj.pop("provenance", None)  # the store records its own (time-free) provenance
    return obj


@functools.lru_cache(maxsize=8)
def _base_config(base_json: str):
    from memcim.config import HardwareConfig

    return HardwareConfig.from_dict(json.loads(base_json))


def compute_point(task_ref: dict, params: dict[str, Any], seed: int | None) -> tuple[dict, dict]:
    """Run one point and return (flat result dict, full config that produced it)."""
    hw_set, kw = split_params(params)
    fixed_hw, fixed_kw = split_params(task_ref["fixed"])
    kw = {**fixed_kw, **kw}
    hw = None
    if task_ref["base"] is not None:
        hw = apply_hw(_base_config(json.dumps(task_ref["base"], sort_keys=True)), hw_set)
    config = {"kind": task_ref["kind"], "target": task_ref["target"],
              "hardware": None if hw is None else hw.to_dict(), "arguments": kw, "seed": seed}
    if task_ref["kind"] == "task":
        fn = resolve_task(task_ref["target"])
        call = dict(kw)
        if hw is not None:
            call["hw"] = hw
        if seed is not None:
            call[task_ref["seed_arg"] or "seed"] = seed
        res = fn(**call)
        if not isinstance(res, dict):
            raise TypeError(f"task {task_ref['target']} returned {type(res).__name__}; a task must return a dict")
    else:
        res = _run_command(task_ref, kw, seed, hw)
    return flatten_result(res), config


def run_point(task_ref: dict, point: dict) -> dict:
    """Worker entry point: compute one point and return its record (never raises ``Exception``).

    Parameters
    ----------
    task_ref : :attr:`SweepSpec.task_ref`.
    point : ``{"point_id", "params", "seed"}``.

    Returns
    -------
    dict with ``point_id``, ``status``, ``error``, ``traceback``, ``result``, ``config``,
    ``wall_time_s`` (the computation alone), ``started_at``, ``finished_at``, ``host``, ``pid``
    and the code version.
    """
    started = _now()
    t0 = time.perf_counter()
    result, config, error, tb = {}, None, None, None
    try:
        result, config = compute_point(task_ref, point["params"], point["seed"])
        status = "ok"
    except Exception as e:  # noqa: BLE001 - a failing point is data, not a crash
        status = "error"
        error = f"{type(e).__name__}: {' '.join(str(e).split())}"[:2000]
        tb = traceback.format_exc()[-4000:]
    wall = time.perf_counter() - t0
    if config is None:
        config = {"kind": task_ref["kind"], "target": task_ref["target"], "base": task_ref["base"],
                  "fixed": task_ref["fixed"], "params": point["params"], "seed": point["seed"]}
    return {"point_id": point["point_id"], "status": status, "error": error, "traceback": tb, "result": result,
            "config": config, "wall_time_s": wall, "started_at": started, "finished_at": _now(),
            "host": socket.gethostname(), "pid": os.getpid(), **code_version()}


# ---- the driver side ---------------------------------------------------------------------------
def make_row(spec: SweepSpec, point: Point, rec: dict) -> dict:
    """The store row of one finished point (parameters and results as columns)."""
    row = {"point_id": point.point_id, "point_index": point.index, "sweep": spec.name, "task": spec.target,
           "status": rec["status"], "error": rec["error"], "seed": point.seed}
    row.update(point.params)
    taken = set(FIXED_COLUMNS) | set(TRAILING_COLUMNS) | set(point.params) | {"traceback"}
    for k, v in rec["result"].items():
        row[f"result.{k}" if k in taken else k] = v
    row.update({k: rec[k] for k in ("wall_time_s", "started_at", "finished_at", "host", "pid",
                                    "memcim_version", "git_commit")})
    row["config"] = json.dumps(rec["config"], sort_keys=True, default=str)
    if rec.get("traceback"):
        row["traceback"] = rec["traceback"]
    return row


def check_scheduler(address: str) -> str:
    """Validate a Dask scheduler address such as ``tcp://10.0.0.5:8786``."""
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"--scheduler: {address!r} is not allowed; give a Dask scheduler address like tcp://HOST:PORT")
    scheme, rest = address.split("://", 1)
    if scheme not in SCHEMES or not rest:
        raise ValueError(f"--scheduler: {address!r} is not allowed; the scheme must be one of "
                         f"{', '.join(SCHEMES)} (e.g. tcp://HOST:8786)")
    if scheme in ("tcp", "tls", "ws", "wss"):
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--scheduler: {address!r} is not allowed; give HOST:PORT with a port 1-65535")
    return address


def connect(address: str, timeout: float = 5.0):
    """A ``dask.distributed.Client`` on ``address``; ``ValueError`` within ``timeout`` s if unreachable."""
    check_scheduler(address)
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover
        raise ValueError("--scheduler: needs dask.distributed (pip install 'memcim[sweep]')") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ValueError(f"--scheduler: cannot reach the Dask scheduler at {address} within {timeout:g} s "
                         f"({type(e).__name__}); start one with `dask scheduler` or check the address") from None


def _progress(total: int, initial: int, desc: str, enabled: bool | None):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, desc=desc, unit="pt", file=sys.stderr, disable=disable,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


def _terminate_pool(pool: ProcessPoolExecutor) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def run_sweep(spec: SweepSpec, store: str | os.PathLike | None = None, *, workers: int | None = None,
              scheduler: str | None = None, client=None, resume: bool = False, retry_failed: bool = False,
              overwrite: bool = False, limit: int | None = None, progress: bool | None = None,
              connect_timeout: float = 5.0) -> dict:
    """Run every point of ``spec`` not already in ``store`` and record each as it finishes.

    Parameters
    ----------
    spec : a parsed spec (:func:`memcim.sweep.spec.parse_spec`).
    store : the SQLite store; default ``spec.store`` or ``<sweep name>.sqlite``.
    workers : embedded pool size (default: the number of CPUs); 0 runs in this process.
    scheduler : a Dask scheduler address (``tcp://HOST:PORT``): run on that cluster instead.
    client : an existing ``dask.distributed.Client`` (instead of ``scheduler``).
    resume : continue a store that already holds points: every recorded point is skipped.
    retry_failed : with ``resume``, run the points recorded as errors again.
    overwrite : delete an existing store first.
    limit : run at most this many of the remaining points (then stop, resumable).
    progress : show a tqdm bar on stderr (default: when stderr is a terminal).
    connect_timeout : seconds to wait for the scheduler.

    Returns
    -------
    dict: ``store``, ``points`` (in the spec), ``skipped`` (already recorded), ``ran``, ``ok``,
    ``failed``, ``remaining``, ``wall_s``, ``engine``, ``workers``.

    Raises
    ------
    ValueError : bad arguments, a store that already holds a sweep without ``resume`` or
        ``overwrite``, or an unreachable scheduler.
    KeyboardInterrupt : re-raised after the finished points are committed.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"--workers: {workers!r} is not allowed; must be an integer >= 0 (0: run in this process)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: {limit!r} is not allowed; must be an integer >= 0")
    if scheduler is not None and client is not None:
        raise ValueError("--scheduler: give a scheduler address or a client, not both")
    if retry_failed and not resume:
        raise ValueError("--retry-failed: only applies with --resume")
    if resume and overwrite:
        raise ValueError("--resume/--overwrite: give at most one")
    path = check_store_path(store or spec.store or f"{spec.name}.sqlite")
    if scheduler is not None:
        check_scheduler(scheduler)
    if overwrite:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    own_client = False
    if scheduler is not None:
        client = connect(scheduler, connect_timeout)  # fail fast, before touching the store
        own_client = True
    t_start = time.perf_counter()
    st = SweepStore(path)
    try:
        recorded = st.statuses()
        if recorded and not resume:
            raise ValueError(f"--store: {path} already holds {len(recorded)} point(s); pass --resume to continue "
                             "that sweep, --overwrite to start again, or choose another --store")
        if st.get_meta("sweep") is None:
            st.set_meta("sweep", spec.name)
            st.set_meta("created", _now())
        st.set_meta("spec", spec.text or json.dumps({"task_ref": spec.task_ref}, default=str))
        skip = {pid for pid, s in recorded.items() if s == "ok" or not retry_failed}
        todo = [p for p in spec.points if p.point_id not in skip]
        skipped = len(spec.points) - len(todo)
        if limit is not None:
            todo = todo[:limit]
        ref = spec.task_ref
        counts = {"ok": 0, "error": 0}
        if workers is None:
            workers = os.cpu_count() or 1
        engine = "dask" if client is not None else ("in-process" if workers == 0 else "process-pool")
        bar = _progress(len(spec.points), skipped, spec.name, progress)

        def record(point: Point, rec: dict) -> None:
            st.write(make_row(spec, point, rec))
            counts[rec["status"]] += 1
            bar.update(1)
            if counts["error"]:
                bar.set_postfix(failed=counts["error"], refresh=False)

        try:
            if not todo:
                pass
            elif client is not None:
                _run_dask(client, ref, todo, record)
            elif workers == 0:
                for p in todo:
                    record(p, run_point(ref, _point_dict(p)))
            else:
                _run_pool(min(workers, len(todo)), ref, todo, record)
        finally:
            bar.close()
        return {"store": str(path), "points": len(spec.points), "skipped": skipped, "ran": sum(counts.values()),
                "ok": counts["ok"], "failed": counts["error"],
                "remaining": len(spec.points) - skipped - sum(counts.values()),
                "wall_s": time.perf_counter() - t_start, "engine": engine,
                "workers": None if client is not None else workers}
    finally:
        st.close()
        if own_client:
            client.close()


def _point_dict(p: Point) -> dict:
    return {"point_id": p.point_id, "params": p.params, "seed": p.seed}


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _run_pool(workers: int, ref: dict, todo: list[Point], record) -> None:
    ctx = _pool_context()
    if ctx.get_start_method() == "forkserver":
        # import torch and the simulator once, in the fork server: workers fork with them loaded
        ctx.set_forkserver_preload(["memcim.sweep.engine", "memcim.sweep.tasks", "memcim.simulate"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    pending = {}
    try:
        for p in todo:
            pending[pool.submit(run_point, ref, _point_dict(p))] = p
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                p = pending.pop(fut)
                try:
                    rec = fut.result()
                except BrokenProcessPool as e:
                    raise RuntimeError(f"a sweep worker process died ({e}); every finished point is saved: "
                                       "rerun with --resume") from None
                record(p, rec)
    except BaseException:
        _terminate_pool(pool)
        raise
    pool.shutdown(wait=True)


def _run_dask(client, ref: dict, todo: list[Point], record) -> None:
    from distributed import as_completed

    futs = {}
    for p in todo:
        f = client.submit(run_point, ref, _point_dict(p), pure=False, key=f"memcim-sweep-{p.point_id}-{os.urandom(4).hex()}")
        futs[f] = p
    try:
        for fut in as_completed(list(futs), loop=client.loop):
            p = futs[fut]
            try:
                rec = fut.result()
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the point took its worker down
                rec = {"point_id": p.point_id, "status": "error", "result": {}, "traceback": None,
                       "error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:2000],
                       "config": {"target": ref["target"], "params": p.params, "seed": p.seed},
                       "wall_time_s": None, "started_at": None, "finished_at": _now(), "host": None, "pid": None,
                       "memcim_version": None, "git_commit": None}
            record(p, rec)
    except BaseException:
        client.cancel(list(futs))
        raise
