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

Every point calls its task directly (a :mod:`memcim.registry` entry, or an allowed
``"module:function"``); nothing parses a command line or reads printed output. Its result dict
is flattened into columns by :func:`flatten_result`, which keeps every number: nested dicts
become ``a.b``, a list of dicts that each carry a ``name`` or ``hardware`` becomes columns keyed
by it (``results.generic.accuracy.mean``), any other list is keyed by position (``x.0``). A
result that cannot be stored is an error of that point, never a silent drop.

Each pool worker runs with ``threads_per_worker`` torch/BLAS threads (default 1), so that the
workers, not the threads of one worker, fill the cores.

Examples
--------
>>> from memcim.sweep.spec import parse_spec
>>> from memcim.sweep.engine import run_sweep
>>> spec = parse_spec({"sweep": {"task": "sleep", "seeds": 2}, "grid": {"value": [1.0, 2.0]}})
>>> run_sweep(spec, "/tmp/doc_sweep.sqlite", workers=0, overwrite=True)["ok"]
4
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import multiprocessing
import os
import socket
import sqlite3
import sys
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from memcim.sweep.spec import Point, SweepSpec, apply_hw, resolve_hw, resolve_task, split_params
from memcim.sweep.store import FIXED_COLUMNS, TRAILING_COLUMNS, SweepStore, check_store_path

SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
#: what one point's result may hold: columns, nesting depth, characters of one text value
MAX_RESULT_COLUMNS = 500
MAX_RESULT_DEPTH = 12
MAX_TEXT = 1000
_LABEL_KEYS = ("name", "hardware")
#: pending points per pool worker (the rest of the spec stays unenumerated)
_PENDING_PER_WORKER = 4


# ---- the worker side ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """memcim version and git commit of the code running in this process (cached)."""
    from memcim.io import provenance

    p = provenance()
    return {"memcim_version": p["memcim_version"], "git_commit": p["git_commit"]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _plain(v: Any) -> Any:
    """numpy / torch scalars -> Python numbers; arrays and tensors -> (nested) lists; tuples -> lists."""
    if isinstance(v, (str, bytes, bool, int, float)) or v is None:
        return v
    if hasattr(v, "detach"):  # torch
        v = v.detach().cpu()
    if hasattr(v, "tolist") and hasattr(v, "ndim"):
        return v.tolist() if v.ndim else v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def _labels(items: list) -> tuple[list[str], str | None]:
    """Column labels of a list's items: a shared unique ``name``/``hardware`` of dicts, else positions."""
    if items and all(isinstance(x, Mapping) for x in items):
        for key in _LABEL_KEYS:
            labs = [x.get(key) for x in items]
            if all(isinstance(lab, (str, int)) and not isinstance(lab, bool) and str(lab) for lab in labs) \
                    and len({str(lab) for lab in labs}) == len(labs):
                return [str(lab) for lab in labs], key
    return [str(i) for i in range(len(items))], None


def flatten_result(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every value of a (nested) result as ``{"a.b": value}`` columns; nothing is dropped.

    * nested dicts: ``{"a": {"b": 1}}`` -> ``a.b``;
    * a list of dicts that each carry a distinct ``name`` (else ``hardware``): keyed by it, that
      key itself omitted (``{"results": [{"hardware": "generic", "accuracy": {"mean": m}}]}``
      -> ``results.generic.accuracy.mean``);
    * any other list, numpy array or tensor: keyed by position (``x.0``, ``x.1``);
    * numpy / torch scalars become Python numbers; a non-finite float becomes None (SQL NULL).

    Raises
    ------
    ValueError : ``result: ...`` for what cannot be stored: an object that is not a number, text,
        boolean, None, dict or list; text over :data:`MAX_TEXT` characters; nesting deeper than
        :data:`MAX_RESULT_DEPTH`; more than :data:`MAX_RESULT_COLUMNS` columns; an integer beyond
        64 bits; two values that flatten to the same column.

    Examples
    --------
    >>> flatten_result({"a": {"b": 1}, "xs": [1.5, float("nan")],
    ...                 "results": [{"hardware": "ideal", "acc": 0.9}, {"hardware": "generic", "acc": 0.8}]})
    {'a.b': 1, 'xs.0': 1.5, 'xs.1': None, 'results.ideal.acc': 0.9, 'results.generic.acc': 0.8}
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"result: a task must return a dict, not {type(obj).__name__}")
    out: dict[str, Any] = {}

    def put(key: str, v: Any) -> None:
        if key in out:
            raise ValueError(f"result: two values flatten to the column {key!r}; rename one")
        out[key] = v
        if len(out) > MAX_RESULT_COLUMNS:
            raise ValueError(f"result: more than {MAX_RESULT_COLUMNS} values (at {key!r}); a sweep stores one "
                             "column per value, so return summaries rather than raw arrays")

    def walk(v: Any, key: str, depth: int) -> None:
        if depth > MAX_RESULT_DEPTH:
            raise ValueError(f"result: {key!r} is nested deeper than {MAX_RESULT_DEPTH} levels; return a flatter "
                             "result")
        v = _plain(v)
        if v is None or isinstance(v, bool):
            put(key, v)
        elif isinstance(v, int):
            if not -2**63 <= v < 2**63:
                raise ValueError(f"result: {key!r} = {v} does not fit a 64-bit integer column")
            put(key, v)
        elif isinstance(v, float):
            put(key, v if math.isfinite(v) else None)
        elif isinstance(v, str):
            if len(v) > MAX_TEXT:
                raise ValueError(f"result: {key!r} is text of {len(v)} characters; at most {MAX_TEXT} are stored")
            put(key, v)
        elif isinstance(v, Mapping):
            for k, x in v.items():
                walk(x, f"{key}.{k}" if key else str(k), depth + 1)
        elif isinstance(v, list):
            labels, label_key = _labels(v)
            for lab, x in zip(labels, v):
                if label_key is not None:
                    x = {k: y for k, y in x.items() if k != label_key}
                walk(x, f"{key}.{lab}" if key else lab, depth + 1)
        else:
            raise ValueError(f"result: {key!r} is a {type(v).__name__}, which a sweep cannot store; return numbers, "
                             "text, booleans, lists or dicts")

    walk(dict(obj), prefix.rstrip("."), 0)
    return out


@functools.lru_cache(maxsize=8)
def _base_config(base_json: str):
    from memcim.config import HardwareConfig

    return HardwareConfig.from_dict(json.loads(base_json))


def _set_threads(n: int) -> None:
    """``n`` torch intra-op threads and ``n`` BLAS/OpenMP threads in this process."""
    os.environ["MEMCIM_THREADS"] = str(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass


def _exit_now() -> None:
    os._exit(1)


def _watch_pid(pid: int, interval: float = 0.5) -> None:
    """Exit this process as soon as process ``pid`` ends (a pidfd where Linux has one, else polling)."""
    try:
        import select

        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])      # readable once the process has exited (zombie or reaped)
        finally:
            _exit_now()
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _exit_now()
        except OSError:
            pass
        time.sleep(interval)


def die_with(driver_pid: int | None) -> None:
    """Make this pool worker end when the sweep that started it ends, however it ends (SIGKILL
    included): a worker's parent is the fork server, which itself waits for its workers, so the
    worker watches the driver's pid in a daemon thread; on Linux it also asks for SIGKILL when its
    own parent (the fork server) dies (``prctl(PR_SET_PDEATHSIG)``)."""
    import threading

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)     # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
        if os.getppid() != parent:        # the parent died before the request took effect
            _exit_now()
    if driver_pid and driver_pid != os.getpid():
        threading.Thread(target=_watch_pid, args=(int(driver_pid),), name="memcim-driver-watch",
                         daemon=True).start()


def init_worker(threads: int | None, driver_pid: int | None = None) -> None:
    """Initializer of a pool worker: ``threads`` threads (None or 0: leave torch's default), and an
    exit when the driver process ``driver_pid`` ends (:func:`die_with`)."""
    die_with(driver_pid)
    if threads:
        _set_threads(threads)


def compute_point(task_ref: dict, params: dict[str, Any], seed: int | None) -> tuple[dict, dict]:
    """Run one point and return (flat result dict, full config that produced it)."""
    hw_set, kw = split_params(params)
    fixed_hw, fixed_kw = split_params(task_ref["fixed"])
    kw = {**(task_ref.get("quick") or {}), **fixed_kw, **kw}
    hw = None
    if task_ref["base"] is not None:
        if "hw" in kw:  # hw varies: its preset or file, then the fixed and varied settings
            base = resolve_hw(kw.pop("hw"), task_ref.get("root", "."), "hw")
            hw = apply_hw(base, {**fixed_hw, **hw_set})
        else:
            hw = apply_hw(_base_config(json.dumps(task_ref["base"], sort_keys=True)), hw_set)
    config = {"kind": task_ref["kind"], "target": task_ref["target"],
              "hardware": None if hw is None else hw.to_dict(), "arguments": kw, "seed": seed}
    if task_ref["kind"] == "import" and not task_ref.get("allow_import"):
        raise ValueError(f"sweep.task: {task_ref['target']!r} was not allowed (allow_import)")
    fn = resolve_task(task_ref["target"], allow_import=task_ref["kind"] == "import")
    call = dict(kw)
    if hw is not None:
        call["hw"] = hw
    if seed is not None:
        call[task_ref["seed_arg"] or "seed"] = seed
    res = fn(**call)
    if not isinstance(res, Mapping) and hasattr(res, "to_dict"):
        res = res.to_dict()
    return flatten_result(res), config


def run_point(task_ref: dict, point: dict) -> dict:
    """Worker entry point: compute one point and return its record (never raises ``Exception``).

    Parameters
    ----------
    task_ref : :attr:`SweepSpec.task_ref` (plus ``threads`` and ``driver_pid`` from the engine).
    point : ``{"point_id", "params", "seed"}``.

    Returns
    -------
    dict with ``point_id``, ``status``, ``error``, ``traceback``, ``result``, ``config``,
    ``wall_time_s`` (the computation alone), ``started_at``, ``finished_at``, ``host``, ``pid``
    and the code version.
    """
    threads = task_ref.get("threads")
    if threads and os.getpid() != task_ref.get("driver_pid"):  # a worker (pool or Dask), never the caller
        _set_threads(threads)
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
        raise ValueError(f"scheduler: {address!r} is not allowed; give a Dask scheduler address like tcp://HOST:PORT")
    scheme, rest = address.split("://", 1)
    if scheme not in SCHEMES or not rest:
        raise ValueError(f"scheduler: {address!r} is not allowed; the scheme must be one of "
                         f"{', '.join(SCHEMES)} (e.g. tcp://HOST:8786)")
    if scheme in ("tcp", "tls", "ws", "wss"):
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"scheduler: {address!r} is not allowed; give HOST:PORT with a port 1-65535")
    return address


def connect(address: str, timeout: float = 5.0):
    """A ``dask.distributed.Client`` on ``address``; ``ValueError`` within ``timeout`` s if unreachable."""
    check_scheduler(address)
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover
        raise ValueError("scheduler: needs dask.distributed (pip install 'memcim[sweep]')") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ValueError(f"scheduler: cannot reach the Dask scheduler at {address} within {timeout:g} s "
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


def _error_record(ref: dict, p: Point, message: str) -> dict:
    return {"point_id": p.point_id, "status": "error", "result": {}, "traceback": None,
            "error": message[:2000], "config": {"target": ref["target"], "params": p.params, "seed": p.seed},
            "wall_time_s": None, "started_at": None, "finished_at": _now(), "host": None, "pid": None,
            "memcim_version": None, "git_commit": None}


def run_sweep(spec: SweepSpec, store: str | os.PathLike | None = None, *, workers: int | None = None,
              threads_per_worker: int = 1, scheduler: str | None = None, client=None, resume: bool = False,
              retry_failed: bool = False, overwrite: bool = False, limit: int | None = None,
              progress: bool | None = None, connect_timeout: float = 5.0) -> dict:
    """Run every point of ``spec`` not already in ``store`` and record each as it finishes.

    Points are enumerated lazily: at most a few per worker are pending at any time, so memory
    does not grow with the size of the sweep.

    Parameters
    ----------
    spec : a parsed spec (:func:`memcim.sweep.spec.parse_spec`).
    store : the SQLite store; default ``spec.store`` or ``<sweep name>.sqlite``.
    workers : embedded pool size (default: the number of CPUs); 0 runs in this process.
    threads_per_worker : torch and BLAS threads of each pool or Dask worker process (default 1;
        0 leaves torch's default). ``workers=0`` keeps the caller's threads.
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
    ``failed``, ``remaining``, ``first_error`` (of this run, or None), ``wall_s``, ``engine``,
    ``workers``, ``threads_per_worker``.

    Raises
    ------
    ValueError : bad arguments, a store that already holds a sweep without ``resume`` or
        ``overwrite``, or an unreachable scheduler.
    KeyboardInterrupt : re-raised after the finished points are committed.
    """
    from memcim import validate

    if workers is not None:
        workers = validate.integer("workers", workers, lo=0, hi=4096)
    threads_per_worker = validate.integer("threads_per_worker", threads_per_worker, lo=0, hi=1024)
    if limit is not None:
        limit = validate.integer("limit", limit, lo=0)
    if scheduler is not None and client is not None:
        raise ValueError("scheduler: give a scheduler address or a client, not both")
    if retry_failed and not resume:
        raise ValueError("retry_failed: only applies with resume")
    if resume and overwrite:
        raise ValueError("resume: give at most one of resume and overwrite")
    if spec.kind == "import" and not spec.allow_import:   # checked here, before any point is submitted
        raise ValueError(f"sweep.task: {spec.target!r} was not allowed; parse the spec with allow_modules= "
                         "(memcim sweep run --allow-module MODULE) or both allow_import opt-ins")
    path = check_store_path(store or spec.store or f"{spec.name}.sqlite", "store")
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
            raise ValueError(f"store: {path} already holds {len(recorded)} point(s); resume to continue "
                             "that sweep, overwrite to start again, or choose another store")
        if st.get_meta("sweep") is None:
            st.set_meta("sweep", spec.name)
            st.set_meta("created", _now())
        st.set_meta("spec", spec.text or json.dumps({"task_ref": spec.task_ref}, default=str))
        skip = {pid for pid, s in recorded.items() if s == "ok" or not retry_failed}
        total = len(spec)
        skipped = sum(1 for p in spec.iter_points() if p.point_id in skip) if skip else 0
        todo: Iterator[Point] = (p for p in spec.iter_points() if p.point_id not in skip)
        if limit is not None:
            todo = itertools.islice(todo, limit)
        ref = dict(spec.task_ref, threads=threads_per_worker or None, driver_pid=os.getpid())
        counts = {"ok": 0, "error": 0}
        first_error: list[str] = []
        if workers is None:
            workers = os.cpu_count() or 1
        engine = "dask" if client is not None else ("in-process" if workers == 0 else "process-pool")
        bar = _progress(total, skipped, spec.name, progress)

        def record(point: Point, rec: dict) -> None:
            try:
                st.write(make_row(spec, point, rec))
            except sqlite3.Error as e:  # e.g. more columns than SQLite allows: an error of this point
                rec = _error_record(ref, point, f"ValueError: store: cannot store the result ({e})")
                st.write(make_row(spec, point, rec))
            counts[rec["status"]] += 1
            if rec["status"] == "error" and not first_error:
                first_error.append(f"point {point.index} ({', '.join(f'{k}={v}' for k, v in point.params.items())}"
                                   f"{'' if point.seed is None else f', seed={point.seed}'}): {rec['error']}")
            bar.update(1)
            if counts["error"]:
                bar.set_postfix(failed=counts["error"], refresh=False)

        try:
            if client is not None:
                _run_dask(client, ref, todo, record)
            elif workers == 0:
                for p in todo:
                    record(p, run_point(ref, _point_dict(p)))
            else:
                remaining = total - skipped if limit is None else min(limit, total - skipped)
                if remaining > 0:
                    _run_pool(min(workers, remaining), threads_per_worker, ref, todo, record)
        finally:
            bar.close()
        ran = sum(counts.values())
        return {"store": str(path), "points": total, "skipped": skipped, "ran": ran,
                "ok": counts["ok"], "failed": counts["error"], "remaining": total - skipped - ran,
                "first_error": first_error[0] if first_error else None,
                "wall_s": time.perf_counter() - t_start, "engine": engine,
                "workers": None if client is not None else workers,
                "threads_per_worker": None if engine == "in-process" else threads_per_worker or None}
    finally:
        st.close()
        if own_client:
            client.close()


def _point_dict(p: Point) -> dict:
    return {"point_id": p.point_id, "params": p.params, "seed": p.seed}


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _run_pool(workers: int, threads: int, ref: dict, todo: Iterable[Point], record) -> None:
    ctx = _pool_context()
    if ctx.get_start_method() == "forkserver":
        # import torch, the simulator and the tasks once, in the fork server: workers fork with them loaded
        ctx.set_forkserver_preload(["memcim.sweep.engine", "memcim.experiments.tasks", "memcim.simulate"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                               initargs=(threads or None, os.getpid()))
    pending: dict = {}
    it = iter(todo)
    cap = workers * _PENDING_PER_WORKER
    try:
        while True:
            for p in itertools.islice(it, max(0, cap - len(pending))):
                pending[pool.submit(run_point, ref, _point_dict(p))] = p
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                p = pending.pop(fut)
                try:
                    rec = fut.result()
                except BrokenProcessPool as e:
                    raise RuntimeError(f"a sweep worker process died ({e}); every finished point is saved: "
                                       "rerun with resume") from None
                record(p, rec)
    except BaseException:
        _terminate_pool(pool)
        raise
    pool.shutdown(wait=True)


def _run_dask(client, ref: dict, todo: Iterable[Point], record) -> None:
    from distributed import as_completed

    futs: dict = {}
    it = iter(todo)
    nthreads = sum((client.nthreads() or {}).values()) or 1
    cap = max(8, nthreads * _PENDING_PER_WORKER)

    def submit(points) -> list:
        out = []
        for p in points:
            f = client.submit(run_point, ref, _point_dict(p), pure=False,
                              key=f"memcim-sweep-{p.point_id}-{os.urandom(4).hex()}")
            futs[f] = p
            out.append(f)
        return out

    first = submit(itertools.islice(it, cap))
    if not first:
        return
    ac = as_completed(first, loop=client.loop)
    try:
        for fut in ac:
            p = futs.pop(fut)
            try:
                rec = fut.result()
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the point took its worker down
                rec = _error_record(ref, p, f"{type(e).__name__}: {' '.join(str(e).split())}")
            record(p, rec)
            for f in submit(itertools.islice(it, 1)):
                ac.add(f)
    except BaseException:
        client.cancel(list(futs))
        raise
