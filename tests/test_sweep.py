"""memcim.sweep: spec parsing and validation, engines (in-process, process pool, Dask), store, resume,
failures, the sweep / plot commands."""
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
from memcim.sweep.engine import run_sweep
from memcim.sweep.spec import parse_spec
from memcim.sweep.store import SweepStore, export_parquet, load_table

HERE = __name__  # this module, importable as "module:function" tasks in-process
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
task = "vmm"
base = "realistic"
seeds = [0, 1]
[fixed]
size = 16
batch = 8
trials = 2
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
task = "vmm"
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
    ('[sweep]\ntask = "vmm"\n[grid]\ndevice.prog_sigma = [0.1]\n', "unknown parameter 'device.prog_sigma'"),
    ('[sweep]\ntask = "vmm"\n[grid]\ndev.g_max = [1e-4]\n', "unknown parameter 'dev.g_max'"),
    ('[sweep]\ntask = "vmm"\n[grid]\nsizes = [8]\n', "unknown parameter 'sizes'"),
    ('[sweep]\ntask = "vmm"\n[grid]\nadc.bits = []\n', "empty list"),
    ('[sweep]\ntask = "vmm"\n[grid]\n', "empty grid"),
    ('[sweep]\ntask = "vmm"\n', "missing [grid]"),
    ('[sweep]\ntask = "nope"\n[grid]\nx = [1]\n', "unknown task 'nope'"),
    ('[sweep]\ntask = "vmm"\ncommand = "vmm"\n[grid]\nsize = [8]\n', "exactly one"),
    ('[sweep]\ncommand = "nope"\n[grid]\nx = [1]\n', "unknown memcim command"),
    ('[sweep]\ncommand = "lowrank"\n[grid]\nadc.bits = [4]\n', "takes no hardware config"),
    ('[sweep]\ncommand = "lowrank"\n[grid]\nranks = [4]\n', "unknown parameter 'ranks'"),
    ('[sweep]\ntask = "vmm"\nseeds = 0\n[grid]\nsize = [8]\n', "sweep.seeds"),
    ('[sweep]\ntask = "vmm"\nseeds = [1, 1]\n[grid]\nsize = [8]\n', "repeats a seed"),
    ('[sweep]\ntask = "vmm"\n[grid]\nadc.bits = [1]\n', "adc.bits = 1 is invalid"),
    ('[sweep]\ntask = "vmm"\n[random]\nsize = [8]\n', "samples"),
    ('[sweep]\ntask = "vmm"\nsamples = 3\n[random]\nsize = {normal = [0, 1]}\n', "not a distribution"),
    ('[sweep]\ntask = "vmm"\nsamples = 3\n[random]\ndevice.g_max = {loguniform = [0, 1]}\n', "lo > 0"),
    ('[sweep]\ntask = "vmm"\n[grid]\nsize = [8]\n[random]\nsize = [8]\n', "not both"),
    ('[sweep]\ntask = "vmm"\nbase = "nope"\n[grid]\nsize = [8]\n', "unknown preset"),
    ('[sweep]\ntask = "sleep"\nbase = "ideal"\n[grid]\nvalue = [1.0]\n', "takes no hardware config"),
    ('[sweep]\ntask = "vmm"\nfoo = 1\n[grid]\nsize = [8]\n', "sweep.foo"),
    ('[sweep]\ntask = "vmm"\n[grid]\nsize = [8, 8]\n', "repeats a point"),
    ('[sweep]\ntask = "vmm"\n[fixed]\nsize = 8\n[grid]\nsize = [8]\n', "also in [fixed]"),
    ('[sweep\ntask = "vmm"\n', "not valid TOML"),
    ('[sweep]\ncommand = "vmm"\n[grid]\nbatch = [8]\n', "needs 'matrix'"),
]


@pytest.mark.parametrize("text,msg", BAD_SPECS)
def test_bad_spec_is_one_line_value_error(tmp_path, text, msg):
    with pytest.raises(ValueError) as e:
        parse_spec(write_spec(tmp_path, text))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_bad_spec_from_the_cli_exits_2_with_one_line(tmp_path, capsys):
    p = write_spec(tmp_path, '[sweep]\ntask = "vmm"\n[grid]\nadc.bit = [4]\n')
    assert main(["sweep", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memcim sweep: error: grid: unknown parameter 'adc.bit'") and "\n" not in err


def test_unreachable_scheduler_fails_fast(tmp_path, capsys):
    p = write_spec(tmp_path, '[sweep]\ntask = "sleep"\n[grid]\nvalue = [1.0]\n')
    t0 = time.perf_counter()
    assert main(["sweep", str(p), "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1"]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err and err.count("\n") == 1
    assert not (tmp_path / "spec.sqlite").exists()  # nothing was started
    for bad in ("127.0.0.1:8786", "http://host:1", "tcp://host:99999"):
        assert main(["sweep", str(p), "--scheduler", bad]) == 2
        assert "--scheduler" in capsys.readouterr().err


# ---- the built-in vmm task against a hand derivation ----------------------------------------
def test_vmm_task_sees_the_swept_hardware(tmp_path):
    """Only programming noise N(0, s^2) per device: E[mse] = 2 s^2 / c^2 * mean_b ||x_b||^2 with
    c = (g_max - g_min) / max|W| (differential pair, two independent devices per weight)."""
    s, n, m, batch, trials = 2e-7, 32, 32, 16, 64
    text = f"""
[sweep]
task = "vmm"
base = "ideal"
seeds = [5]
[fixed]
size = {n}
batch = {batch}
trials = {trials}
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
    assert cfg["arguments"] == {"size": n, "batch": batch, "trials": trials}


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
    with pytest.raises(ValueError, match="--resume"):  # no silent overwrite
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
    cmd = [sys.executable, "-m", "memcim", "sweep", str(p), "--workers", "0", "--store", str(store)]
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
    assert main(["sweep", str(p), "--workers", "0", "--store", str(store), "--resume", "--json"]) == 0
    df = load_table(store)
    assert len(df) == 10 and (df["status"] == "ok").all()
    assert sorted(zip(df["value"], df["seed_out"])) == [(v, s) for v in (1.0, 2.0, 3.0, 4.0, 5.0) for s in (0, 1)]
    assert df["pid"].nunique() == 2  # the points before the kill kept their first run


# ---- failures --------------------------------------------------------------------------------
def test_failing_points_are_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    p = write_spec(tmp_path, f'[sweep]\ntask = "{HERE}:failing"\nseeds = [0]\n[grid]\nx = [4.0, -1.0, 9.0]\n')
    assert main(["sweep", str(p), "--workers", "0", "--json"]) == 1  # 1: some point failed
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 2 and summary["failed"] == 1
    df = load_table(tmp_path / "spec.sqlite").set_index("x")
    assert list(df["status"]) == ["ok", "error", "ok"]
    assert df.loc[-1.0, "error"] == "ArithmeticError: negative x = -1.0"
    assert "ArithmeticError" in df.loc[-1.0, "traceback"] and pd.isna(df.loc[-1.0, "y"])
    assert df.loc[9.0, "y"] == 3.0
    # a failed point counts as done for --resume ...
    assert main(["sweep", str(p), "--workers", "0", "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 0
    # ... unless asked to retry it
    assert main(["sweep", str(p), "--workers", "0", "--resume", "--retry-failed", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ran"] == 1


def test_invalid_hardware_combination_fails_that_point_only(tmp_path):
    """g_min = 50 uS is valid with the base g_max, and g_max = 20 uS with the base g_min; together not."""
    text = ('[sweep]\ntask = "vmm"\nbase = "ideal"\n[fixed]\nsize = 8\nbatch = 4\ntrials = 1\n'
            '[grid]\ndevice.g_min = [5e-5]\ndevice.g_max = [1e-4, 2e-5]\n')
    out = run_sweep(parse_spec(write_spec(tmp_path, text)), tmp_path / "h.sqlite", workers=0)
    assert out["ok"] == 1 and out["failed"] == 1
    df = load_table(tmp_path / "h.sqlite").set_index("device.g_max")
    assert df.loc[2e-5, "error"].startswith("ValueError: device.g_min")


# ---- commands as points, readers, plot ---------------------------------------------------------
def test_cli_command_points_flatten_its_json(tmp_path, capsys):
    np.save(tmp_path / "W.npy", np.random.default_rng(0).standard_normal((12, 6)))
    p = write_spec(tmp_path, '[sweep]\ncommand = "vmm"\nbase = "realistic"\nseeds = [3]\n'
                             '[fixed]\nmatrix = "W.npy"\nbatch = 16\ntrials = 2\nno_budget = true\n'
                             '[grid]\nadc.bits = [4, 8]\n')
    assert main(["sweep", str(p), "--workers", "0", "--json"]) == 0
    capsys.readouterr()
    df = load_table(tmp_path / "spec.sqlite").set_index("adc.bits")
    # the same computation called directly
    hw = tmp_path / "hw.toml"
    from memcim.config import preset
    preset("realistic").replace(adc={"bits": 8}).save(hw)
    assert main(["vmm", "--matrix", str(tmp_path / "W.npy"), "--batch", "16", "--trials", "2", "--no-budget",
                 "--config", str(hw), "--seed", "3", "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert df.loc[8, "error.mse"] == direct["error"]["mse"]
    assert df.loc[4, "error.mse"] > df.loc[8, "error.mse"]  # coarser ADC, larger error
    # the Parquet copy holds the same table, readable by pyarrow (what polars/DuckDB read)
    import pyarrow.parquet as pq
    t = pq.read_table(tmp_path / "spec.parquet").to_pandas()
    assert list(t["error.mse"]) == list(load_table(tmp_path / "spec.sqlite")["error.mse"])
    with sqlite3.connect(tmp_path / "spec.sqlite") as con:  # a plain SQL reader
        assert pd.read_sql('SELECT "error.mse" FROM points', con).shape == (2, 1)


def test_dry_run_lists_points(tmp_path, capsys):
    p = write_spec(tmp_path, VMM_SPEC)
    assert main(["sweep", str(p), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 8 and out["parameters"] == ["device.prog_sigma_rel", "adc.bits"]
    assert not (tmp_path / "spec.sqlite").exists()


def test_plot_means_and_standard_errors(tmp_path, capsys):
    store = tmp_path / "t.sqlite"
    rows = [(g, x, y) for g, x, ys in [("a", 1, [1.0, 2.0, 3.0]), ("a", 2, [4.0, 4.0, 7.0]), ("b", 1, [0.0, 10.0, 5.0])]
            for y in ys]
    with SweepStore(store) as st:
        for i, (g, x, y) in enumerate(rows):
            st.write({"point_id": str(i), "point_index": i, "status": "ok", "grp": g, "x": x, "y": y})
        st.write({"point_id": "bad", "point_index": 99, "status": "error", "grp": "a", "x": 1, "y": None})
    png = tmp_path / "p.png"
    assert main(["plot", str(store), "--x", "x", "--y", "y", "--group", "grp", "--out", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.stat().st_size > 1000
    a, b = out["series"]
    assert (a["group"], a["x"], a["mean"], a["n"]) == ("a", [1, 2], [2.0, 5.0], [3, 3])
    assert a["stderr"] == pytest.approx([1 / math.sqrt(3), math.sqrt(3) / math.sqrt(3)])  # sd 1 and sqrt(3)
    assert b["mean"] == [5.0] and b["stderr"] == pytest.approx([5 / math.sqrt(3)])
    assert main(["plot", str(store), "--x", "x", "--y", "y", "--where", "grp=b", "--json",
                 "--out", str(png)]) == 0
    assert json.loads(capsys.readouterr().out)["series"][0]["mean"] == [5.0]
    export_parquet(store)
    assert main(["plot", str(tmp_path / "t.parquet"), "--x", "x", "--y", "y", "--out", str(png)]) == 0
    for argv, msg in ((["--x", "nope", "--y", "y"], "--x: no column 'nope'"),
                      (["--x", "x", "--y", "grp"], "not numeric"),
                      (["--x", "x", "--y", "y", "--where", "grp"], "COL=VALUE")):
        capsys.readouterr()
        assert main(["plot", str(store), *argv, "--out", str(png)]) == 2
        assert msg in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "missing.sqlite"), "--x", "x", "--y", "y"]) == 2


def test_progress_bar_shows_remaining_time(tmp_path, capsys):
    spec = parse_spec({"sweep": {"task": "sleep", "seeds": 3}, "grid": {"duration": [0.0]}})
    run_sweep(spec, tmp_path / "pb.sqlite", workers=0, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and re.search(r"\d\d:\d\d<\d\d:\d\d", err)  # [elapsed<remaining]
