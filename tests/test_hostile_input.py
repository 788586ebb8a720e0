"""Issue 18: hostile input gets one line naming the flag and exit status 2, never a traceback, a
silent NaN, a memory blow-up or a process left behind.

Each memory case must fail in well under a second: the estimate is made before anything is
allocated. ``MEMCIM_MAX_MEMORY`` pins the limit where a case depends on the machine's memory.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _cli import run_cli
from torch import nn


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), d / "ok.pt")
    nan = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        nan[0].weight[0, 0] = float("nan")
    torch.save(nan, d / "nan.pt")
    inf = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        inf[2].bias[0] = float("inf")
    torch.save(inf, d / "inf.pt")
    nan784 = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        nan784[1].weight[0, 0] = float("nan")
    torch.save(nan784, d / "nan784.pt")
    torch.save(nn.Sequential(nn.Linear(5, 10)), d / "m5.pt")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.random((6, 8)))
    np.save(d / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    np.save(d / "W.npy", rng.random((8, 4)))
    (d / "levels.toml").write_text("[device]\nlevels = 1000000000000\n")
    (d / "rows.toml").write_text("[array]\nrows = 100000000\n")
    return d


NOTICES = ("data:", "paper run ", "memcim: warning")


def one_line(capsys, argv, flag, *, rc=2, seconds=None):
    """Run memcim ``argv``: exit ``rc``, one error line naming ``flag``, no traceback (and, with
    ``seconds``, done in that time)."""
    t0 = time.perf_counter()
    code, out, err = run_cli(argv, capsys)
    took = time.perf_counter() - t0
    lines = [e for e in err.strip().splitlines() if not e.startswith(NOTICES)]
    assert code == rc, (code, out, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "nan" not in out.lower()
    assert f"error: {flag}" in lines[0], lines[0]
    if seconds is not None:
        assert took < seconds, f"{argv} took {took:.2f} s"
    return lines[0]


def model_args(files, name="ok.pt", data="x.npy"):
    return ["--model", str(files / name), "--data", ",".join(str(files / d) for d in data.split(","))]


LOWRANK = ["predict", "lowrank", "--profile", "harmonic", "--size", "8", "--sigma", "0.1", "--rank", "2"]


# ---- 1. bounded memory: refused before any allocation ------------------------------------------------
@pytest.mark.parametrize("extra, flag", [
    (["--reps", "1", "1", "--chips", "1000000000"], "--chips"),
    (["--reps", "1", "1", "--chips", "10000000", "--batch", "1000000"], "--batch"),
    (["--reps", "100000000", "1", "--chips", "10"], "--reps"),
])
def test_lowrank_monte_carlo_memory(capsys, extra, flag):
    line = one_line(capsys, LOWRANK + extra, flag, seconds=1.0)
    assert flag == "--chips" or "of memory, more than the limit" in line


def test_chips_bounds_fail_fast(files, capsys):
    one_line(capsys, ["predict", "mse", *model_args(files), "--chips", "1000000000"], "--chips", seconds=1.0)
    one_line(capsys, ["evaluate", *model_args(files, data="x.npy,y.npy"), "--chips", "1000000000"], "--chips",
             seconds=1.0)


def test_simulate_chips_memory(files, capsys, monkeypatch):
    monkeypatch.setenv("MEMCIM_MAX_MEMORY", "1G")
    line = one_line(capsys, ["simulate", "--matrix", files / "W.npy", "--chips", "100000"], "--chips", seconds=1.0)
    assert "MEMCIM_MAX_MEMORY=1G" in line
    one_line(capsys, ["simulate", "--matrix", files / "W.npy", "--chips", "2", "--batch", "10000000"], "--batch",
             seconds=1.0)
    one_line(capsys, ["predict", "column", "--matrix", files / "W.npy", "--chips", "100000"], "--chips", seconds=1.0)


def test_train_huge_width(files, capsys, monkeypatch):
    monkeypatch.setenv("MEMCIM_MAX_MEMORY", "1G")
    one_line(capsys, ["train", "--arch", "mlp-100000000", "--data", f"{files / 'x.npy'},{files / 'y.npy'}",
                      "--out", files / "tr-huge"], "--arch", seconds=1.0)
    assert not (files / "tr-huge" / "checkpoint.pt").exists()


def test_exact_covariance_memory(files, capsys, monkeypatch):
    monkeypatch.setenv("MEMCIM_MAX_MEMORY", "1K")
    one_line(capsys, ["predict", "mse", *model_args(files), "--cov", "exact"], "--cov")


def test_memory_limit_setting(monkeypatch):
    from memcim import validate

    assert validate.parse_bytes("x", "8G") == 8 * 2**30 and validate.parse_bytes("x", "1.5k") == 1536
    monkeypatch.setenv("MEMCIM_MAX_MEMORY", "lots")
    with pytest.raises(ValueError, match="MEMCIM_MAX_MEMORY: 'lots' is not a size"):
        validate.memory("chips", 10)
    monkeypatch.setenv("MEMCIM_MAX_MEMORY", "1M")
    validate.memory("chips", 2**20)
    with pytest.raises(ValueError, match=r"chips: .* more than the limit 1 MiB"):
        validate.memory("chips", 2**20 + 1)


# ---- 2. no silent NaN: a non-finite model is refused, naming --model / --init ----------------------------
@pytest.mark.parametrize("argv", [
    ["predict", "mse"],
    ["optimize", "gmax", "--power-budget", "1"],
    ["optimize", "range"],
    ["evaluate", "--chips", "2"],
])
@pytest.mark.parametrize("name", ["nan.pt", "inf.pt"])
def test_non_finite_model_names_model(files, capsys, argv, name):
    data = "x.npy,y.npy" if argv[0] == "evaluate" else "x.npy"
    line = one_line(capsys, [*argv, *model_args(files, name, data)], "--model")
    assert "NaN or infinite" in line and "power-budget" not in line


def test_non_finite_model_train_init_and_paper(files, capsys):
    one_line(capsys, ["train", "--init", files / "nan.pt", "--data", f"{files / 'x.npy'},{files / 'y.npy'}",
                      "--out", files / "tr-nan"], "--init")
    one_line(capsys, ["paper", "run", "002/fig9a", "--quick", "--model", files / "nan784.pt"], "--model")
    one_line(capsys, ["paper", "run", "000/mlp", "--quick", "--model", files / "nan784.pt"], "--model")


def test_nan_result_is_never_printed(capsys):
    from memcim.commands._shared import check_finite_result

    check_finite_result("data", {"a": 1.0, "b": [2, 3]}, "x")
    with pytest.raises(ValueError, match=r"data: the MSE is not finite \(b\.1 = nan\)"):
        check_finite_result("data", {"a": 1.0, "b": [2, float("nan")]}, "the MSE")


# ---- 4. tracebacks: a model that does not fit, an unwritable output ----------------------------------
def test_model_of_wrong_shape(files, capsys):
    for key in ("002/fig9a", "000/mlp"):
        line = one_line(capsys, ["paper", "run", key, "--quick", "--model", files / "m5.pt"], "--model")
        assert "does not accept mnist samples" in line
    one_line(capsys, ["train", "--init", files / "m5.pt", "--data", f"{files / 'x.npy'},{files / 'y.npy'}",
                      "--out", files / "tr-m5"], "--input-shape")


def test_unwritable_outputs(files, capsys, tmp_path):
    one_line(capsys, ["predict", "mse", *model_args(files), "--out", "/proc/x"], "--out", seconds=1.0)
    one_line(capsys, ["demo", "--out", "/proc/x"], "--out", seconds=1.0)
    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\ntask = "sleep"\n[grid]\nvalue = [1.0]\n')
    one_line(capsys, ["sweep", "run", spec, "--workers", "0", "--store", "/proc/x/s.sqlite"], "--store", seconds=1.0)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            one_line(capsys, ["sweep", "run", spec, "--workers", "0", "--store", ro / "s.sqlite"], "--store")
        finally:
            ro.chmod(0o700)


# ---- 5. flags accepted and ignored --------------------------------------------------------------------
def test_flags_that_do_not_apply(files, capsys):
    one_line(capsys, ["predict", "mse", *model_args(files), "--act-method", "gh"], "--act-method")
    one_line(capsys, ["predict", "mse", *model_args(files), "--taylor-order", "4"], "--taylor-order")
    one_line(capsys, ["map", "--matrix", files / "W.npy", "--method", "linear", "--tune-inputs", "--inputs",
                      files / "x.npy"], "--tune-inputs")
    for f, key in (("levels.toml", "device.levels"), ("rows.toml", "array.rows")):
        line = one_line(capsys, ["hw", "check", files / f], "")
        assert key in line and "not allowed" in line


# ---- 6. leftovers ---------------------------------------------------------------------------------------
def _session(sid):
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid and int(p) != sid]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ps -o sid and forkserver: Linux")
def test_sigkilled_sweep_leaves_no_process(tmp_path):
    """SIGKILL a 2-worker sweep: its fork server, workers and resource tracker all end."""
    spec = tmp_path / "k.toml"
    spec.write_text('[sweep]\ntask = "sleep"\nseeds = 2\n[fixed]\nduration = 1.0\n'
                    '[grid]\nvalue = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]\n')
    proc = subprocess.Popen([sys.executable, "-m", "memcim", "sweep", "run", str(spec), "--workers", "2",
                             "--store", str(tmp_path / "k.sqlite")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_session(proc.pid)) < 3:   # fork server + 2 workers (+ tracker)
            time.sleep(0.1)
        assert len(_session(proc.pid)) >= 3, "the pool did not start"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _session(proc.pid):
        time.sleep(0.1)
    left = _session(proc.pid)
    for pid in left:   # leave nothing behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left after SIGKILL: {left}"


def test_checkpoint_tmp_never_left(tmp_path, monkeypatch):
    from memcim.nn import train as tr

    path = tmp_path / "checkpoint.pt"

    def broken_save(obj, f):
        open(f, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tr.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        tr._atomic_save({"a": 1}, path)
    assert list(tmp_path.iterdir()) == []
    # a killed run's file (its pid is gone) is removed at start-up; a live process's is kept
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"checkpoint.pt.tmp{dead.pid}").write_bytes(b"x")
    (tmp_path / f"checkpoint.pt.tmp{os.getppid()}").write_bytes(b"x")
    assert tr.remove_stale_tmp(path) == [tmp_path / f"checkpoint.pt.tmp{dead.pid}"]
    assert [p.name for p in tmp_path.iterdir()] == [f"checkpoint.pt.tmp{os.getppid()}"]


def test_train_leaves_no_tmp(files, capsys, tmp_path):
    out = tmp_path / "run"
    code, _o, err = run_cli(["train", "--arch", "mlp-4", "--data", f"{files / 'x.npy'},{files / 'y.npy'}",
                             "--epochs", "1", "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.pt", "train.json"]


# ---- 7. messages ------------------------------------------------------------------------------------------
def test_messages_name_their_flag(files, capsys):
    one_line(capsys, ["predict", "mse", *model_args(files), "--seed", str(2**70)], "--seed", seconds=1.0)
    line = one_line(capsys, ["hw", "check", files], "")
    assert "is a directory" in line
    code, out, err = run_cli(["evaluate", *model_args(files, data="x.npy,y.npy"), "--chips", "1"], capsys)
    assert code == 0 and "nan" not in out.lower() and "one chip: no interval" in out, err
