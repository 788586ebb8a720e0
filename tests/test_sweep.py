"""memcim.sweep: spec parsing and validation, lazy enumeration and its limit, engines (in-process,
process pool, Dask), threads per worker, store, flattening that keeps every number, resume,
failures, the untrusted-import opt-in, the `sweep run` / `sweep plot` commands."""
import itertools
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memcim.cli import main
from memcim.sweep.engine import flatten_result, run_sweep
from memcim.sweep.spec import parse_spec as _parse_spec
from memcim.sweep.store import SweepStore, export_parquet, load_table

HERE = __name__  # this module, importable as "module:function" tasks in-process


def parse_spec(source, **kw):
    """The tests' own "module:function" tasks are allowed by the caller (the spec says so too)."""
    return _parse_spec(source, allow_import=True, **kw)
PROVENANCE = ["wall_time_s", "started_at", "finished_at", "host", "pid", "memcim_version", "git_commit"]


# ---- helper tasks (module:function) -------------------------------------------------------------
def poly(x: float = 0.0, k: int = 1, seed: int = 0, log: str = "", stop_at: str = "") -> dict:
    """y = k x^2 + seed; appends its arguments to ``log``; raises KeyboardInterrupt at x == stop_at
    while the file ``stop_at`` names exists (a simulated Ctrl-C)."""
    if log:
        with open(log, "a") as f:
            f.write(json.dumps([x, k, seed]) + "\n")
    return {"y": k * x * x + seed, "x_echo": x}


def interrupting(x: float = 0.0, seed: int = 0, log: str = "", trigger: str = "") -> dict:
    if trigger and os.path.exists(trigger) and x == 2.0 and seed == 1:
        raise KeyboardInterrupt
    return poly(x=x, seed=seed, log=log)


def failing(x: float = 0.0, seed: int = 0) -> dict:
    if x < 0:
        raise ArithmeticError(f"negative x = {x}")
    return {"y": math.sqrt(x) + seed}


def write_spec(tmp_path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def results(df: pd.DataFrame) -> pd.DataFrame:
    """The table without what legitimately differs between runs (timing, host, worker)."""
    return df.drop(columns=[c for c in PROVENANCE + ["traceback"] if c in df.columns]) \
             .sort_values("point_id").reset_index(drop=True)


VMM_SPEC = """
[sweep]
task = "simulate"
hw = "generic"
seeds = [0, 1]
[fixed]
size = 16
batch = 8
chips = 2
[grid]
device.prog_sigma_rel = [0.0, 0.05]
adc.bits = [4, 8]
"""


# ---- spec ------------------------------------------------------------------------------------
def test_grid_is_the_cartesian_product_times_seeds(tmp_path):
    spec = parse_spec(write_spec(tmp_path, VMM_SPEC))
    want = [({"device.prog_sigma_rel": s, "adc.bits": b}, seed)
            for s, b, seed in itertools.product([0.0, 0.05], [4, 8], [0, 1])]
    assert [(p.params, p.seed) for p in spec.points] == want
    assert len({p.point_id for p in spec.points}) == 8
    # ids depend only on the computation: the same spec parsed again gives the same ids
    assert [p.point_id for p in parse_spec(write_spec(tmp_path, VMM_SPEC, "b.toml")).points] == \
        [p.point_id for p in spec.points]
    # unquoted dotted keys and quoted ones are the same parameter
    quoted = VMM_SPEC.replace("device.prog_sigma_rel", '"device.prog_sigma_rel"')
    assert [p.point_id for p in parse_spec(write_spec(tmp_path, quoted, "q.toml")).points] == \
        [p.point_id for p in spec.points]


def test_random_sample_is_seeded_and_within_bounds(tmp_path):
    text = """
[sweep]
task = "simulate"
samples = 400
sample_seed = 3
[random]
device.g_max = {loguniform = [1e-5, 1e-3]}
device.prog_sigma_rel = {uniform = [0.0, 0.1]}
adc.bits = {randint = [4, 8]}
mapping.scheme = ["differential", "offset"]
"""
    a = parse_spec(write_spec(tmp_path, text))
    b = parse_spec(write_spec(tmp_path, text, "b.toml"))
    assert [p.params for p in a.points] == [p.params for p in b.points] and len(a) == 400
    g = np.array([p.params["device.g_max"] for p in a.points])
    s = np.array([p.params["device.prog_sigma_rel"] for p in a.points])
    bits = [p.params["adc.bits"] for p in a.points]
    assert g.min() >= 1e-5 and g.max() <= 1e-3 and s.min() >= 0 and s.max() <= 0.1
    assert set(bits) == {4, 5, 6, 7, 8}
    # log-uniform: log10(g) is uniform on [-5, -3]: mean -4, sd 2/sqrt(12); 5 standard errors
    assert abs(np.log10(g).mean() + 4) < 5 * (2 / math.sqrt(12)) / math.sqrt(400)
    assert abs(s.mean() - 0.05) < 5 * (0.1 / math.sqrt(12)) / math.sqrt(400)
    other = parse_spec(write_spec(tmp_path, text.replace("sample_seed = 3", "sample_seed = 4"), "c.toml"))
    assert [p.params for p in other.points] != [p.params for p in a.points]


BAD_SPECS = [
    ('[sweep]\ntask = "simulate"\n[grid]\ndevice.prog_sigma = [0.1]\n', "unknown parameter 'device.prog_sigma'"),
    ('[sweep]\ntask = "simulate"\n[grid]\ndev.g_max = [1e-4]\n', "unknown parameter 'dev.g_max'"),
    ('[sweep]\ntask = "simulate"\n[grid]\nsizes = [8]\n', "unknown parameter 'sizes'"),
    ('[sweep]\ntask = "simulate"\n[grid]\nadc.bits = []\n', "empty list"),
    ('[sweep]\ntask = "simulate"\n[grid]\n', "empty grid"),
    ('[sweep]\ntask = "simulate"\n', "missing [grid]"),
    ('[sweep]\ntask = "nope"\n[grid]\nx = [1]\n', "unknown task 'nope'"),
    ('[sweep]\ntask = "vmm"\n[grid]\nsize = [8]\n', "sweep.task: 'vmm' is now the registry task 'simulate'"),
    ('[sweep]\ncommand = "vmm"\n[grid]\nbatch = [8]\n', 'sweep.command: specs no longer run CLI commands; '
                                                          'name the registry task instead: task = "simulate"'),
    ('[sweep]\ncommand = "evaluate"\n[grid]\nchips = [8]\n', 'task = "evaluate"'),
    ('[sweep]\ntask = "sleep"\n[grid]\nadc.bits = [4]\n', "takes no hardware"),
    ('[sweep]\ntask = "simulate"\nseeds = 0\n[grid]\nsize = [8]\n', "sweep.seeds"),
    ('[sweep]\ntask = "simulate"\nseeds = [1, 1]\n[grid]\nsize = [8]\n', "repeats a seed"),
    ('[sweep]\ntask = "simulate"\n[grid]\nadc.bits = [1]\n', "adc.bits = 1 is invalid"),
    ('[sweep]\ntask = "simulate"\n[random]\nsize = [8]\n', "samples"),
    ('[sweep]\ntask = "simulate"\nsamples = 3\n[random]\nsize = {normal = [0, 1]}\n', "not a distribution"),
    ('[sweep]\ntask = "simulate"\nsamples = 3\n[random]\ndevice.g_max = {loguniform = [0, 1]}\n', "lo > 0"),
    ('[sweep]\ntask = "simulate"\nsamples = 3\n[random]\nadc.bits = {randint = [1, 8]}\n', "adc.bits = 1 is invalid"),
    ('[sweep]\ntask = "simulate"\n[grid]\nsize = [8]\n[random]\nsize = [8]\n', "not both"),
    ('[sweep]\ntask = "simulate"\nhw = "nope"\n[grid]\nsize = [8]\n', "sweep.hw: unknown preset"),
    ('[sweep]\ntask = "simulate"\n[grid]\nhw = ["ideal", "nope"]\n', "grid: hw: unknown preset"),
    ('[sweep]\ntask = "simulate"\nhw = "ideal"\n[grid]\nhw = ["ideal"]\n', "also given in [sweep]"),
    ('[sweep]\ntask = "sleep"\nhw = "ideal"\n[grid]\nvalue = [1.0]\n', "sweep.hw: sleep takes no hardware"),
    ('[sweep]\ntask = "simulate"\nfoo = 1\n[grid]\nsize = [8]\n', "sweep.foo"),
    ('[sweep]\ntask = "simulate"\n[grid]\nsize = [8, 8]\n', "size repeats the value 8"),
    ('[sweep]\ntask = "simulate"\n[fixed]\nsize = 8\n[grid]\nsize = [8]\n', "also in [fixed]"),
    ('[sweep\ntask = "simulate"\n', "not valid TOML"),
    ('[sweep]\ntask = "evaluate"\n[grid]\nchips = [2]\n', "needs 'model'"),
    ('[sweep]\ntask = "sleep"\nseeds = 1000001\n[grid]\nvalue = [1.0]\n', "sweep.seeds: the sweep has 1,000,001 points"),
]


@pytest.mark.parametrize("text,msg", BAD_SPECS)
def test_bad_spec_is_one_line_value_error(tmp_path, text, msg):
    with pytest.raises(ValueError) as e:
        parse_spec(write_spec(tmp_path, text))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_bad_spec_from_the_cli_exits_2_with_one_line(tmp_path, capsys):
    p = write_spec(tmp_path, '[sweep]\ntask = "simulate"\n[grid]\nadc.bit = [4]\n')
    assert main(["sweep", "run", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memcim sweep run: error: grid: unknown parameter 'adc.bit'") and "\n" not in err
    assert main(["sweep", str(p)]) == 2  # the old form: one notice line naming the new one, then the error
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "memcim sweep is now `memcim sweep run`; running that" and len(err) == 2


def test_unreachable_scheduler_fails_fast(tmp_path, capsys):
    p = write_spec(tmp_path, '[sweep]\ntask = "sleep"\n[grid]\nvalue = [1.0]\n')
    t0 = time.perf_counter()
    assert main(["sweep", "run", str(p), "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1"]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err and err.count("\n") == 1
    assert not (tmp_path / "spec.sqlite").exists()  # nothing was started
    for bad in ("127.0.0.1:8786", "http://host:1", "tcp://host:99999"):
        assert main(["sweep", "run", str(p), "--scheduler", bad]) == 2
        assert "--scheduler" in capsys.readouterr().err


# ---- the registry's simulate / predict tasks against a hand derivation -------------------------
def test_simulate_and_predict_see_the_swept_hardware(tmp_path):
    """Only programming noise N(0, s^2) per device: E[mse] = 2 s^2 / c^2 * mean_b ||x_b||^2 with
    c = (g_max - g_min) / max|W| (differential pair, two independent devices per weight)."""
    s, n, m, batch, trials = 2e-7, 32, 32, 16, 64
    text = f"""
[sweep]
task = "simulate"
hw = "ideal"
seeds = [5]
[fixed]
size = {n}
batch = {batch}
chips = {trials}
[grid]
device.prog_sigma_abs = [0.0, {s}]
"""
    run_sweep(parse_spec(write_spec(tmp_path, text)), tmp_path / "v.sqlite", workers=0)
    df = load_table(tmp_path / "v.sqlite").set_index("device.prog_sigma_abs")
    assert (df["status"] == "ok").all()
    assert df.loc[0.0, "mse"] < 1e-24  # ideal hardware computes x W exactly
    rng = np.random.default_rng(5)  # the task's documented draws: W then x
    W = rng.standard_normal((n, m)) / math.sqrt(n)
    x = rng.standard_normal((batch, n))
    c = (1e-4 - 1e-6) / np.abs(W).max()
    expected = 2 * s ** 2 / c ** 2 * np.mean(np.sum(x ** 2, axis=1))
    # trials * m independent noise columns: relative sd of the estimate <= sqrt(2 / (trials m))
    assert df.loc[s, "mse"] == pytest.approx(expected, rel=5 * math.sqrt(2 / (trials * m)))
    cfg = json.loads(df.loc[s, "config"])
    assert cfg["hardware"]["device"]["prog_sigma_abs"] == s and cfg["seed"] == 5
    assert cfg["arguments"] == {"size": n, "batch": batch, "chips": trials}
    # the closed form on the same matrix and inputs (task "predict"): the same expectation, no sampling
    pred = text.replace('task = "simulate"', 'task = "predict"').replace(f"chips = {trials}", 'matrix = "gaussian"')
    run_sweep(parse_spec(write_spec(tmp_path, pred, "p.toml")), tmp_path / "p.sqlite", workers=0)
    dp = load_table(tmp_path / "p.sqlite").set_index("device.prog_sigma_abs")
    assert (dp["status"] == "ok").all() and dp.loc[0.0, "mse_mean"] < 1e-24
    assert dp.loc[s, "mse_mean"] == pytest.approx(expected, rel=1e-6)


# ---- engines agree ---------------------------------------------------------------------------
def test_dask_local_cluster_and_process_pool_match_in_process(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = parse_spec(write_spec(tmp_path, VMM_SPEC))
    ref = run_sweep(spec, tmp_path / "serial.sqlite", workers=0)
    assert ref["ok"] == 8
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                                  protocol="tcp://") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        out = run_sweep(spec, tmp_path / "dask.sqlite", scheduler=cluster.scheduler_address)
    assert out["engine"] == "dask" and out["ok"] == 8
    pool = run_sweep(spec, tmp_path / "pool.sqlite", workers=2)
    assert pool["engine"] == "process-pool" and pool["ok"] == 8
    a = results(load_table(tmp_path / "serial.sqlite"))
    for other in ("dask.sqlite", "pool.sqlite"):
        pd.testing.assert_frame_equal(a, results(load_table(tmp_path / other)), check_exact=False, rtol=1e-12)
    # the pool really used other processes
    assert set(load_table(tmp_path / "pool.sqlite")["pid"]) .isdisjoint({os.getpid()})


# ---- resume ----------------------------------------------------------------------------------
def _poly_spec(tmp_path, task, extra=""):
    log = tmp_path / "calls.log"
    return write_spec(tmp_path, f"""
[sweep]
task = "{HERE}:{task}"
allow_import = true
seeds = [0, 1]
[fixed]
log = "{log}"
{extra}
[grid]
x = [1.0, 2.0, 3.0]
"""), log


def test_interrupted_sweep_resumes_to_the_same_table_without_recomputing(tmp_path):
    trigger = tmp_path / "stop"
    trigger.touch()
    p, log = _poly_spec(tmp_path, "interrupting", f'trigger = "{trigger}"')
    spec = parse_spec(p)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C at the 4th point (x = 2, seed = 1)
        run_sweep(spec, tmp_path / "r.sqlite", workers=0)
    assert len(load_table(tmp_path / "r.sqlite")) == 3
    with pytest.raises(ValueError, match="store: .* already holds 3 point.*resume"):  # no silent overwrite
        run_sweep(spec, tmp_path / "r.sqlite", workers=0)
    trigger.unlink()
    out = run_sweep(spec, tmp_path / "r.sqlite", workers=0, resume=True)
    assert out["skipped"] == 3 and out["ran"] == 3 and out["remaining"] == 0
    calls = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 6  # every point computed exactly once
    log.unlink()
    run_sweep(spec, tmp_path / "clean.sqlite", workers=0)
    pd.testing.assert_frame_equal(results(load_table(tmp_path / "r.sqlite")),
                                  results(load_table(tmp_path / "clean.sqlite")))
    df = load_table(tmp_path / "clean.sqlite")
    assert list(df["y"]) == [x * x + s for x in (1.0, 2.0, 3.0) for s in (0, 1)]
    assert run_sweep(spec, tmp_path / "r.sqlite", workers=0, resume=True)["ran"] == 0


def test_killed_process_resumes(tmp_path):
    """SIGKILL the CLI mid-sweep (no cleanup at all), then --resume: the same final table."""
    p = write_spec(tmp_path, '[sweep]\ntask = "sleep"\nseeds = 2\n[fixed]\nduration = 0.25\n'
                             '[grid]\nvalue = [1.0, 2.0, 3.0, 4.0, 5.0]\n')
    store = tmp_path / "k.sqlite"
    cmd = [sys.executable, "-m", "memcim", "sweep", "run", str(p), "--workers", "0", "--store", str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        n = 0
        while time.time() < deadline and n < 3:
            time.sleep(0.1)
            if store.exists():
                try:
                    with sqlite3.connect(store) as con:
                        n = con.execute("SELECT COUNT(*) FROM points").fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
        assert n >= 3, "the sweep did not start"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(load_table(store))
    assert 3 <= done < 10
    assert main(["sweep", "run", str(p), "--workers", "0", "--store", str(store), "--resume", "--json"]) == 0
    df = load_table(store)
    assert len(df) == 10 and (df["status"] == "ok").all()
    assert sorted(zip(df["value"], df["seed_out"])) == [(v, s) for v in (1.0, 2.0, 3.0, 4.0, 5.0) for s in (0, 1)]
    assert df["pid"].nunique() == 2  # the points before the kill kept their first run


# ---- failures --------------------------------------------------------------------------------
def test_failing_points_are_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    p = write_spec(tmp_path, f'[sweep]\ntask = "{HERE}:failing"\nallow_import = true\nseeds = [0]\n'
                             '[grid]\nx = [4.0, -1.0, 9.0]\n')
    assert main(["sweep", "run", str(p), "--workers", "0", "--json", "--allow-import"]) == 1  # 1: a point failed
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert cap.err.strip() == ("memcim sweep run: 1 of 3 point(s) failed (recorded in the store with status 'error'); "
                               "first: point 1 (x=-1.0, seed=0): ArithmeticError: negative x = -1.0")
    assert summary["ok"] == 2 and summary["failed"] == 1
    df = load_table(tmp_path / "spec.sqlite").set_index("x")
    assert list(df["status"]) == ["ok", "error", "ok"]
    assert df.loc[-1.0, "error"] == "ArithmeticError: negative x = -1.0"
    assert "ArithmeticError" in df.loc[-1.0, "traceback"] and pd.isna(df.loc[-1.0, "y"])
    assert df.loc[9.0, "y"] == 3.0
    # a failed point counts as done for --resume ...
    assert main(["sweep", "run", str(p), "--workers", "0", "--resume", "--json", "--allow-import"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 0
    # ... unless asked to retry it
    assert main(["sweep", "run", str(p), "--workers", "0", "--resume", "--retry-failed", "--json",
                 "--allow-import"]) == 1
    assert json.loads(capsys.readouterr().out)["ran"] == 1


def test_invalid_hardware_combination_fails_that_point_only(tmp_path):
    """g_min = 50 uS is valid with the base g_max, and g_max = 20 uS with the base g_min; together not."""
    text = ('[sweep]\ntask = "simulate"\nhw = "ideal"\n[fixed]\nsize = 8\nbatch = 4\nchips = 1\n'
            '[grid]\ndevice.g_min = [5e-5]\ndevice.g_max = [1e-4, 2e-5]\n')
    out = run_sweep(parse_spec(write_spec(tmp_path, text)), tmp_path / "h.sqlite", workers=0)
    assert out["ok"] == 1 and out["failed"] == 1
    df = load_table(tmp_path / "h.sqlite").set_index("device.g_max")
    assert df.loc[2e-5, "error"].startswith("ValueError: device.g_min")


# ---- results keep every number -----------------------------------------------------------------
def _digits_classifier(tmp_path):
    """A least-squares linear classifier of the digits data, saved with torch.save (a safe file)."""
    import torch
    from torch import nn

    from memcim.data.spec import load_data

    tr = load_data("digits:train:600")
    X = tr.x.reshape(len(tr), -1).double()
    Y = torch.nn.functional.one_hot(tr.y, 10).double()
    A = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    sol = torch.linalg.lstsq(A, Y, driver="gelsd").solution  # gelsy (the default) fails on the rank-deficient digits pixels
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(sol[:64].t())
        model[1].bias.copy_(sol[64])
    torch.save(model, tmp_path / "lin.pt")
    te = load_data("digits:test:120")
    with torch.no_grad():
        acc = float((model(te.x).argmax(1) == te.y).float().mean())
    return tmp_path / "lin.pt", acc


def test_evaluate_sweep_keeps_every_number_of_the_results_list(tmp_path):
    """The evaluate task returns its analog results as a list (one per hardware); the store gets them
    as results.<hardware>.* columns, and on ideal hardware the analog accuracy is the digital one,
    computed here independently."""
    model, acc = _digits_classifier(tmp_path)
    assert acc > 0.8  # a real classifier, so the check below means something
    p = write_spec(tmp_path, f"""
[sweep]
task = "evaluate"
[fixed]
model = "{model.name}"
data = "digits:test:120"
chips = 3
seed = 1
calib_samples = 64
[grid]
hw = ["ideal", "generic"]
""")
    assert main(["sweep", "run", str(p), "--workers", "0", "--json"]) == 0
    df = load_table(tmp_path / "spec.sqlite").set_index("hw")
    assert (df["status"] == "ok").all()
    ideal, real = df.loc["ideal"], df.loc["generic"]
    assert ideal["digital.accuracy"] == pytest.approx(acc, abs=1e-9)
    assert ideal["results.ideal.accuracy.mean"] == pytest.approx(acc, abs=1 / 120 + 1e-9)
    assert ideal["results.ideal.mse.mean"] < 1e-8
    vals = [real[f"results.generic.accuracy.values.{c}"] for c in range(3)]
    assert real["results.generic.accuracy.mean"] == pytest.approx(np.mean(vals), abs=1e-12)
    assert real["results.generic.accuracy.n"] == 3 and real["results.generic.mse.mean"] > 0
    lo, hi = real["results.generic.accuracy.ci95_mean.0"], real["results.generic.accuracy.ci95_mean.1"]
    assert lo <= real["results.generic.accuracy.mean"] <= hi
    assert pd.isna(ideal["results.generic.accuracy.mean"])  # each point's columns are its own hardware's
    # the Parquet copy holds the same table, readable by pyarrow (what polars/DuckDB read)
    import pyarrow.parquet as pq
    t = pq.read_table(tmp_path / "spec.parquet").to_pandas().set_index("hw")
    assert t.loc["generic", "results.generic.accuracy.mean"] == real["results.generic.accuracy.mean"]
    with sqlite3.connect(tmp_path / "spec.sqlite") as con:  # a plain SQL reader
        assert pd.read_sql('SELECT "results.ideal.accuracy.mean" FROM points', con).shape == (2, 1)


def test_flatten_keeps_lists_and_names_columns_by_name_or_hardware():
    import torch

    doc = {"digital": {"accuracy": np.float32(0.5)},
           "results": [{"hardware": "ideal", "accuracy": {"mean": 0.9, "ci95_mean": [0.8, 1.0]}},
                       {"hardware": "generic", "accuracy": {"mean": 0.7, "ci95_mean": [0.6, 0.8]}}],
           "layers": [{"name": "fc1", "w": 1}, {"name": "fc2", "w": 2}],
           "same": [{"hardware": "x", "v": 1}, {"hardware": "x", "v": 2}],  # not unique: by position
           "arr": np.arange(3), "t": torch.tensor([1.5, float("inf")]), "flag": True, "none": None, "label": "ok"}
    assert flatten_result(doc) == {
        "digital.accuracy": 0.5, "results.ideal.accuracy.mean": 0.9, "results.ideal.accuracy.ci95_mean.0": 0.8,
        "results.ideal.accuracy.ci95_mean.1": 1.0, "results.generic.accuracy.mean": 0.7,
        "results.generic.accuracy.ci95_mean.0": 0.6, "results.generic.accuracy.ci95_mean.1": 0.8,
        "layers.fc1.w": 1, "layers.fc2.w": 2, "same.0.hardware": "x", "same.0.v": 1, "same.1.hardware": "x",
        "same.1.v": 2, "arr.0": 0, "arr.1": 1, "arr.2": 2, "t.0": 1.5, "t.1": None, "flag": True, "none": None,
        "label": "ok"}
    for bad, msg in (({"obj": object()}, "'obj' is a object"), ({"s": "x" * 5000}, "text of 5000 characters"),
                     ({"big": list(range(10_000))}, "more than 500 values"), ({"i": 2**70}, "64-bit"),
                     ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": 1}}}}}}}}}}}}}},
                      "deeper than 12"),
                     ({"a.b": 1, "a": {"b": 2}}, "two values flatten to the column 'a.b'")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            flatten_result(bad)


def unstorable(x: float = 0.0, seed: int = 0) -> dict:
    return {"y": x, "blob": object() if x > 1 else "fine"}


def test_a_result_that_cannot_be_stored_is_an_error_not_a_silent_drop(tmp_path, capsys):
    p = write_spec(tmp_path, f'[sweep]\ntask = "{HERE}:unstorable"\nallow_import = true\n[grid]\nx = [1.0, 2.0]\n')
    assert main(["sweep", "run", str(p), "--workers", "0", "--allow-import"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1 of 2 point(s) failed" in err and "result: 'blob' is a object" in err
    df = load_table(tmp_path / "spec.sqlite").set_index("x")
    assert list(df["status"]) == ["ok", "error"] and df.loc[1.0, "blob"] == "fine"
    assert df.loc[2.0, "error"].startswith("ValueError: result: 'blob' is a object")


# ---- untrusted code -------------------------------------------------------------------------------
def test_module_function_tasks_need_both_opt_ins(tmp_path, capsys):
    marker = tmp_path / "MARK"
    text = f'[sweep]\ntask = "os:system"\n{{allow}}[grid]\ncommand = ["touch {marker}"]\n'
    both = "needs allow_import = true in [sweep] and allow_import=True (memcim sweep run --allow-import)"
    for allow, flag, missing in (("", [], None), ("", ["--allow-import"], "allow_import = true in [sweep]"),
                                 ("allow_import = true\n", [], "allow_import=True (--allow-import)")):
        p = write_spec(tmp_path, text.format(allow=allow))
        assert main(["sweep", "run", str(p), "--workers", "0", *flag]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and both in err and (missing is None or err.endswith(f"missing: {missing}"))
        with pytest.raises(ValueError, match="sweep.task: 'os:system' runs a function by module path"):
            _parse_spec(p, allow_import=bool(flag))
    assert not marker.exists()
    # the worker refuses it too, whatever a hand-made task_ref says
    from memcim.sweep.engine import run_point
    rec = run_point({"kind": "import", "target": "os:system", "base": None, "fixed": {}, "seed_arg": None},
                    {"point_id": "x", "params": {"command": f"touch {marker}"}, "seed": None})
    assert rec["status"] == "error" and "allow_import" in rec["error"] and not marker.exists()


# ---- size limits and lazy enumeration --------------------------------------------------------------
def test_huge_sweeps_are_refused_before_enumeration_and_big_ones_stay_lazy(tmp_path, capsys):
    import tracemalloc

    grid = ", ".join(str(i) for i in range(1500))
    huge = f'[sweep]\ntask = "sleep"\nseeds = 600\n[grid]\nvalue = [{grid}]\nduration = [{grid}]\n'
    t0 = time.perf_counter()
    assert main(["sweep", "run", str(write_spec(tmp_path, huge)), "--dry-run", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("memcim sweep run: error: grid.value: the sweep has 1,350,000,000 points (value 1500 x "
                   "duration 1500 x seeds 600), more than max_points = 1,000,000; split it into smaller sweeps "
                   "or raise max_points")
    assert time.perf_counter() - t0 < 10
    # under the limit: counting and showing the first points costs nothing in proportion to the sweep
    big = f'[sweep]\ntask = "sleep"\nseeds = 400\n[grid]\nvalue = [{grid}]\n'  # 600,000 points
    tracemalloc.start()
    spec = _parse_spec(write_spec(tmp_path, big, "big.toml"))
    first = list(itertools.islice(spec.iter_points(), 3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(spec) == 600_000 and [(p.params["value"], p.seed) for p in first] == [(0, 0), (0, 1), (0, 2)]
    assert peak < 5e6, peak
    # max_points raises or lowers the limit
    with pytest.raises(ValueError, match="more than max_points = 1,000"):
        _parse_spec(write_spec(tmp_path, big, "big.toml"), max_points=1000)
    out = run_sweep(spec, tmp_path / "big.sqlite", workers=0, limit=2)
    assert out["ran"] == 2 and out["remaining"] == 600_000 - 2


# ---- threads per worker ---------------------------------------------------------------------------
def torch_threads(value: float = 0.0) -> dict:
    import torch

    return {"threads": torch.get_num_threads(), "env": int(os.environ.get("OMP_NUM_THREADS", "0"))}


def test_pool_workers_use_one_thread_unless_told(tmp_path):
    import torch

    before = torch.get_num_threads()
    p = write_spec(tmp_path, f'[sweep]\ntask = "{HERE}:torch_threads"\nallow_import = true\n'
                             '[grid]\nvalue = [1.0, 2.0]\n')
    spec = parse_spec(p)
    run_sweep(spec, tmp_path / "t1.sqlite", workers=2)
    df = load_table(tmp_path / "t1.sqlite")
    assert list(df["threads"]) == [1, 1] and list(df["env"]) == [1, 1]
    run_sweep(spec, tmp_path / "t2.sqlite", workers=2, threads_per_worker=2)
    assert list(load_table(tmp_path / "t2.sqlite")["threads"]) == [2, 2]
    run_sweep(spec, tmp_path / "t0.sqlite", workers=0, threads_per_worker=1)  # in-process: the caller's own
    assert list(load_table(tmp_path / "t0.sqlite")["threads"]) == [before, before]
    assert torch.get_num_threads() == before


def test_dry_run_lists_points(tmp_path, capsys):
    p = write_spec(tmp_path, VMM_SPEC)
    assert main(["sweep", "run", str(p), "--dry-run", "--json", "--limit", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 8 and out["parameters"] == ["device.prog_sigma_rel", "adc.bits"]
    assert [(d["device.prog_sigma_rel"], d["adc.bits"], d["seed"]) for d in out["list"]] == \
        [(0.0, 4, 0), (0.0, 4, 1), (0.0, 8, 0)]
    assert not (tmp_path / "spec.sqlite").exists()


def test_plot_means_and_standard_errors(tmp_path, capsys):
    store = tmp_path / "t.sqlite"
    rows = [(g, x, y) for g, x, ys in [("a", 1, [1.0, 2.0, 3.0]), ("a", 2, [4.0, 4.0, 7.0]), ("b", 1, [0.0, 10.0, 5.0])]
            for y in ys]
    with SweepStore(store) as st:
        for i, (g, x, y) in enumerate(rows):
            st.write({"point_id": str(i), "point_index": i, "status": "ok", "grp": g, "x": x, "y": y})
        st.write({"point_id": "bad", "point_index": 99, "status": "error", "grp": "a", "x": 1, "y": None})
    out_dir = tmp_path / "plots"
    assert main(["sweep", "plot", str(store), "--x", "x", "--y", "y", "--group", "grp", "--out", str(out_dir),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    png, doc = out_dir / "t_y_vs_x.png", out_dir / "t_y_vs_x.json"
    assert png.stat().st_size > 1000 and json.loads(doc.read_text())["series"] == out["series"]
    a, b = out["series"]
    assert (a["group"], a["x"], a["mean"], a["n"]) == ("a", [1, 2], [2.0, 5.0], [3, 3])
    assert a["stderr"] == pytest.approx([1 / math.sqrt(3), math.sqrt(3) / math.sqrt(3)])  # sd 1 and sqrt(3)
    assert b["mean"] == [5.0] and b["stderr"] == pytest.approx([5 / math.sqrt(3)])
    assert main(["sweep", "plot", str(store), "--x", "x", "--y", "y", "--where", "grp=b", "--json",
                 "--out", str(out_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["series"][0]["mean"] == [5.0]
    export_parquet(store)
    assert main(["plot", str(tmp_path / "t.parquet"), "--x", "x", "--y", "y"]) == 0  # the old form; --out: beside it
    assert (tmp_path / "t_y_vs_x.png").is_file() and (tmp_path / "t_y_vs_x.json").is_file()
    for argv, msg in ((["--x", "nope", "--y", "y"], "--x: no column 'nope'"),
                      (["--x", "x", "--y", "grp"], "--y: column 'grp' is not numeric"),
                      (["--x", "x", "--y", "y", "--where", "grp"], "--where: 'grp' is not allowed; write COL=VALUE"),
                      (["--x", "x", "--y", "y", "--out", str(png)], "--out: ")):
        capsys.readouterr()
        assert main(["sweep", "plot", str(store), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
    assert main(["sweep", "plot", str(tmp_path / "missing.sqlite"), "--x", "x", "--y", "y"]) == 2


def test_progress_bar_shows_remaining_time(tmp_path, capsys):
    spec = parse_spec({"sweep": {"task": "sleep", "seeds": 3}, "grid": {"duration": [0.0]}})
    run_sweep(spec, tmp_path / "pb.sqlite", workers=0, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and re.search(r"\d\d:\d\d<\d\d:\d\d", err)  # [elapsed<remaining]


# ---- --allow-module: functions from modules named on the command line (issue 18) ---------------------
@pytest.fixture
def mypkg(tmp_path, monkeypatch):
    """A package ``mypkg_18`` with ``mypkg_18.sub:square``, importable in this process."""
    root = tmp_path / "pkgs"
    (root / "mypkg_18").mkdir(parents=True)
    (root / "mypkg_18" / "__init__.py").write_text("def top(x):\n    return {'y': x}\n")
    (root / "mypkg_18" / "sub.py").write_text("def square(x):\n    return {'y': x * x}\n")
    monkeypatch.syspath_prepend(str(root))
    yield "mypkg_18"
    for name in [m for m in sys.modules if m == "mypkg_18" or m.startswith("mypkg_18.")]:
        del sys.modules[name]


def test_allow_module_runs_named_modules_only(tmp_path, capsys, mypkg):
    p = write_spec(tmp_path, '[sweep]\ntask = "mypkg_18.sub:square"\n[grid]\nx = [2.0, 3.0]\n')
    store = tmp_path / "s.sqlite"
    assert main(["sweep", "run", str(p), "--workers", "0", "--store", str(store), "--no-parquet",
                 "--allow-module", "mypkg_18"]) == 0, capsys.readouterr().err
    assert sorted(load_table(store)["y"]) == [4.0, 9.0]
    capsys.readouterr()
    # the module itself, a parent, or one of several; the spec's allow_import is not needed
    for mods in (["mypkg_18.sub"], ["other", "mypkg_18"]):
        spec = _parse_spec(p, allow_import=False, allow_modules=mods)
        assert spec.allow_import and spec.kind == "import"
    # anything else, without the full opt-in, is refused with one line naming --allow-module
    for mods in ([], ["mypkg"], ["mypkg_18.other"], ["mypkg_18.sub.deeper"]):
        argv = ["sweep", "run", str(p), "--workers", "0", "--store", str(tmp_path / "r.sqlite")]
        for m in mods:
            argv += ["--allow-module", m]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and "--allow-module mypkg_18" in err, err
    assert not (tmp_path / "r.sqlite").exists()
    # a module outside the named ones stays refused, whatever it is
    marker = tmp_path / "MARK"
    q = write_spec(tmp_path, f'[sweep]\ntask = "os:system"\n[grid]\ncommand = ["touch {marker}"]\n', "os.toml")
    assert main(["sweep", "run", str(q), "--workers", "0", "--allow-module", "mypkg_18"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allow-module os" in err and not marker.exists()
    # a bad module name is one line naming the flag
    assert main(["sweep", "run", str(p), "--workers", "0", "--allow-module", "my-pkg"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allow-module: 'my-pkg' is not a module name" in err, err


def test_allow_module_rule_holds_for_dask_before_submission(tmp_path, capsys, mypkg):
    """With --scheduler the trust check runs in the driver, before the scheduler is contacted."""
    import dataclasses

    p = write_spec(tmp_path, '[sweep]\ntask = "mypkg_18.sub:square"\n[grid]\nx = [2.0]\n')
    t0 = time.perf_counter()
    assert main(["sweep", "run", str(p), "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "30",
                 "--store", str(tmp_path / "d.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allow-module mypkg_18" in err and "scheduler" not in err, err
    assert time.perf_counter() - t0 < 5
    # with the module allowed, the sweep gets as far as the scheduler (unreachable here)
    assert main(["sweep", "run", str(p), "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "0.5",
                 "--store", str(tmp_path / "d.sqlite"), "--allow-module", "mypkg_18"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--scheduler" in err and "allow" not in err, err
    # a hand-made spec that was not allowed is refused by run_sweep before it connects or submits
    spec = dataclasses.replace(_parse_spec(p, allow_modules=["mypkg_18"]), allow_import=False)
    with pytest.raises(ValueError, match="sweep.task: 'mypkg_18.sub:square' was not allowed"):
        run_sweep(spec, tmp_path / "h.sqlite", scheduler="tcp://127.0.0.1:9", connect_timeout=30)
    assert not (tmp_path / "h.sqlite").exists()
