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
