"""Bad input, command by command: every subcommand meets a missing file, a wrong type, an
out-of-range value, an unknown preset and an unknown ``--set`` key, and answers each with one
line that names the flag (or key), exit status 2, and no traceback.

``VALID`` holds one cheap, valid command line per subcommand; each bad value is put in place of
(or added to) it, so the failure comes from the bad value and not from a missing argument. A
new subcommand must be added there: the walk fails on a command it does not know.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from memcim.cli import build_parser, main


def _leaves():
    parser = build_parser()
    out = {}

    def walk(p, path):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[" ".join(path)] = p
            return
        for name, child in subs[0].choices.items():
            walk(child, path + [name])

    walk(parser, [])
    return out


LEAVES = _leaves()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("walk")
    rng = np.random.default_rng(0)
    np.save(d / "W.npy", rng.standard_normal((16, 8)) / 4)
    np.save(d / "X.npy", rng.standard_normal((4, 16)))
    np.save(d / "G.npy", rng.uniform(1e-6, 1e-4, (8, 8)))
    (d / "spec.toml").write_text('[sweep]\ntask = "sleep"\n[grid]\nduration = [0.0]\n')
    (d / "hw.toml").write_text('name = "mine"\n[device]\ng_max = 1e-4\n')
    rows = ["target,measured"] + [f"{lvl},{(lvl + 1) * 1e-5 + k * 1e-7}" for lvl in range(3) for k in range(4)]
    (d / "dev.csv").write_text("\n".join(rows) + "\n")
    return d


def valid(files) -> dict[str, list[str]]:
    """One cheap, valid command line per subcommand (without the command words)."""
    W, X, G = str(files / "W.npy"), str(files / "X.npy"), str(files / "G.npy")
    model = ["--model", "mnist-mlp-256-128", "--data", "mnist:test:8"]
    return {
        "hw show": ["generic"], "hw list": [], "hw check": [str(files / "hw.toml")],
        "hw diff": ["ideal", "generic"],
        "map": ["--matrix", W],
        "simulate": ["--matrix", W, "--chips", "1"],
        "evaluate": [*model, "--chips", "1"],
        "predict mse": [*model, "--hw", "memse"],
        "predict column": ["--matrix", W],
        "predict lowrank": ["--matrix", W, "--rank", "2", "--reps", "1", "1", "--sigma", "0.1", "--chips", "2"],
        "optimize range": [*model],
        "optimize gmax": [*model, "--power-budget", "1"],
        "optimize lowrank": ["--matrix", W, "--sigma", "0.1"],
        "train": ["--arch", "mlp-8", "--data", "digits:train:64", "--epochs", "1", "--hw", "noisy"],
        "paper list": [], "paper run": ["002/fig4", "--quick"], "paper reproduce": ["000", "--quick"],
        "sweep run": [str(files / "spec.toml"), "--dry-run"], "sweep plot": [str(files / "store.sqlite"), "--x", "a", "--y", "b"],
        "demo": ["--quick"],
        "device fit": [str(files / "dev.csv")],
    }


def _run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_every_subcommand_is_walked(files):
    missing = sorted(set(LEAVES) - set(valid(files)))
    assert not missing, f"add a valid command line for {missing} to VALID"


def _cases():
    for cmd in sorted(LEAVES):
        p = LEAVES[cmd]
        opts = set(p._option_string_actions)
        yield cmd, "unknown flag", ["--no-such-flag"], "--no-such-flag"
        if "--hw" in opts:
            yield cmd, "unknown preset", ["--hw", "no-such-preset"], "--hw"
            yield cmd, "missing hw file", ["--hw", "/nonexistent/hw.toml"], "--hw"
        if "--set" in opts:
            yield cmd, "unknown --set key", ["--set", "nosection.nokey=1"], "nosection.nokey"
            yield cmd, "--set out of range", ["--set", "device.g_max=-1"], "device.g_max"
        if "--chips" in opts:
            yield cmd, "wrong type", ["--chips", "many"], "--chips"
            yield cmd, "out of range", ["--chips", "-3"], "--chips"
        if "--seed" in opts:
            yield cmd, "out of range", ["--seed", "-1"], "--seed"
        if "--threads" in opts:
            yield cmd, "out of range", ["--threads", "0"], "--threads"
        for action in p._actions:
            flag = next((o for o in action.option_strings if o.startswith("--")), None)
            if flag is None or flag in ("--chips", "--seed", "--threads", "--help"):
                continue
            if action.type in (int, float):
                yield cmd, "wrong type", [flag, "not-a-number"], flag
            elif action.choices:
                yield cmd, "not a choice", [flag, "no-such-choice"], flag
        for flag in ("--matrix", "--inputs", "--conductances"):
            if flag in opts:
                yield cmd, "missing file", [flag, "/nonexistent/a.npy"], flag
        if "--model" in opts:
            yield cmd, "missing model", ["--model", "/nonexistent/m.pt"], "--model"
        if "--data" in opts:
            yield cmd, "unknown dataset", ["--data", "nosuchdata:test:5"], "--data"
            yield cmd, "missing data file", ["--data", "/nonexistent/x.npy,/nonexistent/y.npy"], "--data"


#: positional inputs: (command, bad argv replacing the valid one, what the error must name)
POSITIONAL = [
    ("hw show", ["no-such-preset"], "no-such-preset"),
    ("hw check", ["/nonexistent/hw.toml"], "not found"),
    ("device fit", ["/nonexistent/dev.csv"], "not found"),
    ("hw diff", ["ideal", "no-such-preset"], "no-such-preset"),
    ("paper run", ["009/fig1"], "009/fig1"),
    ("paper reproduce", ["009"], "009"),
    ("sweep run", ["/nonexistent/spec.toml"], "not found"),
    ("sweep plot", ["/nonexistent/store.sqlite", "--x", "a", "--y", "b"], "not found"),
]


@pytest.mark.parametrize("cmd,argv,needle", POSITIONAL, ids=[c[0] for c in POSITIONAL])
def test_bad_positional_gets_one_line(cmd, argv, needle, capsys):
    rc, err = _run(cmd.split() + argv, capsys)
    errors = [line for line in err if ": error:" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in "\n".join(err), err
    assert needle in errors[0], errors[0]


def _replace(argv: list[str], bad: list[str]) -> list[str]:
    """``argv`` with ``bad``'s flag replaced (or ``bad`` added when the flag is absent)."""
    flag = bad[0]
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out + bad


@pytest.mark.parametrize("cmd,what,bad,needle", list(_cases()), ids=lambda v: str(v) if isinstance(v, str) else None)
def test_bad_input_gets_one_line_naming_the_flag(cmd, what, bad, needle, files, capsys):
    argv = cmd.split() + _replace(valid(files)[cmd], bad)
    rc, err = _run(argv, capsys)
    assert rc == 2, f"{argv}: exit {rc}, stderr {err}"
    lines = [l for l in err if not l.startswith("memcim ") or ": error:" in l]
    errors = [l for l in err if ": error:" in l]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), f"{argv}: {err}"
    assert needle in errors[0], f"{argv}: the error does not name {needle}: {errors[0]}"
    del lines


# ---- issue 18 probe classes: empty, truncated, NaN, huge, unwritable -----------------------------------
#: an output path no one can write (a file under /proc cannot be created, even by root)
UNWRITABLE = "/proc/memcim-x"


@pytest.fixture(scope="module")
def probes(files):
    """Bad files next to the walk's good ones: empty, truncated, NaN (arrays and a model)."""
    import torch
    from torch import nn

    d = files
    for name in ("empty.npy", "empty.npz", "empty.toml", "empty.csv", "empty.pt", "empty.sqlite"):
        (d / name).write_bytes(b"")
    rng = np.random.default_rng(1)
    np.savez(d / "full.npz", W=rng.standard_normal((16, 8)))
    raw = (d / "full.npz").read_bytes()
    (d / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    w = rng.standard_normal((16, 8)) / 4
    w[3, 2] = np.nan
    np.save(d / "nanW.npy", w)
    x = rng.standard_normal((4, 16))
    x[0, 0] = np.nan
    np.save(d / "nanX.npy", x)
    np.save(d / "y.npy", np.array([0, 1, 2, 3]))
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        m[1].weight[0, 0] = float("nan")
    torch.save(m, d / "nan784.pt")
    # a real store for `sweep plot`
    spec = d / "probe-spec.toml"
    spec.write_text('[sweep]\ntask = "sleep"\n[grid]\nvalue = [1.0, 2.0]\n[fixed]\nduration = 0.0\n')
    assert main(["sweep", "run", str(spec), "--workers", "0", "--store", str(d / "store.sqlite"),
                 "--no-parquet"]) == 0
    return d


def _probe_cases():
    """(command, probe class, bad argv, needle, seconds): every subcommand that reads a file or
    writes --out, against every probe class that applies to it."""
    f = "{d}/"
    huge = str(10**9)
    arrays = {"map": ["--matrix", "--inputs"], "simulate": ["--matrix", "--inputs", "--conductances"],
              "predict column": ["--matrix", "--inputs"], "predict lowrank": ["--matrix"],
              "optimize lowrank": ["--matrix"]}
    for cmd, flags in arrays.items():
        for flag in flags:
            yield cmd, "empty .npy", [flag, f + "empty.npy"], flag, 5
            yield cmd, "empty .npz", [flag, f + "empty.npz"], flag, 5
            yield cmd, "truncated .npz", [flag, f + "trunc.npz"], flag, 5
        yield cmd, "NaN array", [flags[0], f + "nanW.npy"], flags[0], 5
    yield "map", "NaN inputs", ["--inputs", f + "nanX.npy", "--tune-inputs"], "--inputs", 5
    yield "simulate", "NaN inputs", ["--inputs", f + "nanX.npy"], "--inputs", 5
    models = ["evaluate", "predict mse", "optimize range", "optimize gmax"]
    for cmd in models:
        yield cmd, "empty model", ["--model", f + "empty.pt"], "--model", 5
        yield cmd, "NaN model", ["--model", f + "nan784.pt"], "--model", 30
        yield cmd, "empty data", ["--data", f"{f}empty.npy,{f}y.npy"], "--data", 30
        yield cmd, "truncated data", ["--data", f"{f}trunc.npz,{f}y.npy"], "--data", 30
        yield cmd, "NaN data", ["--data", f"{f}nanX.npy,{f}y.npy", "--input-shape", "16"], "--data", 30
    yield "paper run", "NaN model", ["--model", f + "nan784.pt"], "--model", 30
    yield "paper run", "empty model", ["--model", f + "empty.pt"], "--model", 5
    yield "train", "empty data", ["--data", f"{f}empty.npy,{f}y.npy"], "--data", 5
    yield "train", "truncated data", ["--data", f"{f}trunc.npz,{f}y.npy"], "--data", 5
    yield "train", "NaN data", ["--data", f"{f}nanX.npy,{f}y.npy"], "--data", 5
    yield "train", "empty init", ["--init", f + "empty.pt"], "--init", 5
    yield "train", "NaN init", ["--init", f + "nan784.pt", "--data", "mnist:train:8"], "--init", 30
    # huge counts: refused from an estimate, before anything is allocated
    yield "simulate", "huge", ["--chips", huge], "--chips", 2
    yield "evaluate", "huge", ["--chips", huge], "--chips", 2
    yield "predict mse", "huge", ["--chips", huge], "--chips", 2
    yield "predict column", "huge", ["--chips", huge], "--chips", 2
    yield "predict lowrank", "huge", ["--chips", huge], "--chips", 2
    yield "optimize lowrank", "huge", ["--chips", huge], "--chips", 2
    yield "demo", "huge", ["--chips", huge], "--chips", 2
    yield "paper run", "huge", ["--chips", huge], "--chips", 2
    yield "train", "huge", ["--arch", f"mlp-{huge}"], "--arch", 2
    # files given by position
    yield "hw check", "empty .toml", [f + "empty.toml"], "empty.toml", 5
    yield "sweep run", "empty spec", [f + "empty.toml"], "SPEC", 5
    yield "device fit", "empty .csv", [f + "empty.csv"], "empty.csv", 5
    yield "sweep plot", "empty store", [f + "empty.sqlite", "--x", "value", "--y", "value"], "empty.sqlite", 5
    # an unwritable output, refused before any work
    for cmd in sorted(LEAVES):
        if "--out" in LEAVES[cmd]._option_string_actions:
            yield cmd, "unwritable --out", ["--out", UNWRITABLE], "--out", 5
    yield "sweep run", "unwritable --store", ["--store", UNWRITABLE + "/s.sqlite"], "--store", 5


PROBES = list(_probe_cases())
POSITIONAL_PROBES = {"hw check", "sweep run", "device fit", "sweep plot"}


def _probe_argv(cmd, bad, files):
    base = valid(files)[cmd]
    if cmd == "sweep plot":
        base = [str(files / "store.sqlite"), "--x", "value", "--y", "value"]
    if bad[0].startswith("--"):
        if cmd == "sweep run" and bad[0] == "--store":
            base = [a for a in base if a != "--dry-run"] + ["--workers", "0"]
        if cmd == "train" and "--arch" not in bad:
            base = [*base, "--out", str(files / "train-probe")]
        return cmd.split() + _replace(base, bad)
    n_pos = {"sweep plot": 1}.get(cmd, 1)
    return cmd.split() + bad + [a for a in base[n_pos:] if a not in bad]


def test_probes_cover_every_file_reading_subcommand():
    covered = {c for c, *_ in PROBES}
    readers = {cmd for cmd, p in LEAVES.items()
               if set(p._option_string_actions) & {"--matrix", "--inputs", "--model", "--data", "--init", "--out"}}
    readers |= POSITIONAL_PROBES
    assert readers <= covered, sorted(readers - covered)


@pytest.mark.parametrize("cmd,what,bad,needle,seconds", PROBES,
                         ids=[f"{c}-{w}-{b[0].lstrip('-')}" for c, w, b, *_ in PROBES])
def test_probe_gets_one_line_fast(cmd, what, bad, needle, seconds, probes, capsys):
    import time

    bad = [b.replace("{d}/", f"{probes}/") for b in bad]
    argv = _probe_argv(cmd, bad, probes)
    t0 = time.perf_counter()
    rc, err = _run(argv, capsys)
    took = time.perf_counter() - t0
    errors = [line for line in err if ": error:" in line]
    assert rc == 2, f"{argv}: exit {rc}, stderr {err}"
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), f"{argv}: {err}"
    assert needle in errors[0], f"{argv}: the error does not name {needle}: {errors[0]}"
    assert took < seconds, f"{argv} took {took:.2f} s (limit {seconds} s)"


#: huge size flags, whole command lines (``{d}/`` is the probe directory): each refused in < 2 s
HUGE_SIZES = [
    (["predict", "lowrank", "--profile", "harmonic", "--size", "1000000000", "--rank", "2", "--reps", "1", "1",
      "--sigma", "0.1"], "--size"),
    (["optimize", "lowrank", "--profile", "harmonic", "--size", "1000000000", "--sigma", "0.1"], "--size"),
    (["simulate", "--matrix", "{d}/W.npy", "--batch", "1000000000"], "--batch"),
    (["train", "--arch", "mlp-8", "--data", "digits:train:64", "--batch-size", "1000000000"], "--batch-size"),
    (["optimize", "gmax", "--model", "mnist-mlp-256-128", "--data", "mnist:test:8", "--power-budget", "1",
      "--pop-size", "1000000000"], "--pop-size"),
]


@pytest.mark.parametrize("argv,flag", HUGE_SIZES, ids=[f"{' '.join(a[:2])}-{f}" for a, f in HUGE_SIZES])
def test_huge_size_fails_fast(argv, flag, probes, capsys):
    import time

    argv = [a.replace("{d}/", f"{probes}/") for a in argv]
    t0 = time.perf_counter()
    rc, err = _run(argv, capsys)
    took = time.perf_counter() - t0
    errors = [line for line in err if ": error:" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in "\n".join(err), f"{argv}: {err}"
    assert f"error: {flag}" in errors[0], errors[0]
    assert took < 2, f"{argv} took {took:.2f} s"


@pytest.mark.parametrize("cmd", sorted(LEAVES))
def test_every_subcommand_has_max_memory(cmd, files, capsys):
    """--max-memory is on every command; a bad size is one line naming it."""
    assert "--max-memory" in LEAVES[cmd]._option_string_actions
    argv = cmd.split() + _replace(valid(files)[cmd], ["--max-memory", "lots"])
    rc, err = _run(argv, capsys)
    errors = [line for line in err if ": error:" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in "\n".join(err), f"{argv}: {err}"
    assert "--max-memory: 'lots' is not a size" in errors[0], errors[0]


def test_max_memory_sets_the_limit(files, capsys, monkeypatch):
    """--max-memory wins over MEMCIM_MAX_MEMORY for one run, and leaves the process as it was."""
    import os
    import time

    from memcim import validate

    monkeypatch.setenv("MEMCIM_MAX_MEMORY", "64G")
    argv = ["simulate", "--matrix", str(files / "W.npy"), "--chips", "100000"]
    t0 = time.perf_counter()
    rc, err = _run([*argv, "--max-memory", "1G"], capsys)
    assert rc == 2 and len(err) == 1 and "--chips:" in err[0] and "limit 1 GiB (--max-memory 1G)" in err[0], err
    assert time.perf_counter() - t0 < 2
    assert os.environ["MEMCIM_MAX_MEMORY"] == "64G" and validate.memory_limit() == (64 * 2**30, "MEMCIM_MAX_MEMORY=64G")
    rc, err = _run(["simulate", "--matrix", str(files / "W.npy"), "--chips", "2", "--max-memory", "500M"], capsys)
    assert rc == 0, err
    monkeypatch.delenv("MEMCIM_MAX_MEMORY")
    rc, err = _run([*argv, "--max-memory", "2G"], capsys)
    assert rc == 2 and "(--max-memory 2G)" in err[0], err
    assert "MEMCIM_MAX_MEMORY" not in os.environ and "--max-memory" in validate.memory_limit()[1]
