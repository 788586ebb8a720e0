"""``memcim predict lowrank`` / ``memcim optimize lowrank`` and ``memcim lowrank-fig2`` in-process."""
import json

import numpy as np
import pytest
from _cli import run_cli


def _run(capsys, argv):
    return run_cli(argv, capsys)


def test_lowrank_json_fields_and_monte_carlo_agreement(capsys, tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 12))
    X = rng.standard_normal((40, 20))
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", X)
    rc, out, err = _run(capsys, ["predict", "lowrank", "--matrix", str(tmp_path / "W.npy"), "--inputs",
                                 str(tmp_path / "X.npy"), "--sigma", "0.3", "--rank", "4", "--reps", "2", "3",
                                 "--split", "left", "--chips", "800", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    assert (d["k"], d["r1"], d["r2"], d["split"]) == (4, 2, 3, "left")
    assert d["sigma_units"].startswith("weight units") and d["config"]["chips"] == 800
    assert d["devices"]["lowrank"] == 2 * 20 * 4 + 3 * 4 * 12 and d["devices"]["baseline"] == 240
    assert set(d["lowrank"]["terms"]) >= {"truncation", "first_step", "second_step", "product"}
    for key in ("baseline", "lowrank"):
        mc, pred = d[key]["monte_carlo"], d[key]["predicted"]
        assert abs(mc["mean"] - pred) < 4.5 * mc["stderr"]
    # baseline closed form by hand: sigma^2 m tr(X^T X / N)
    assert d["baseline"]["predicted"] == pytest.approx(0.09 * 12 * np.sum(X ** 2) / 40)


def test_lowrank_optimize_harmonic_and_out(capsys, tmp_path):
    rc, out, err = _run(capsys, ["optimize", "lowrank", "--profile", "harmonic", "--size", "64", "--sigma", "1.0",
                                 "--chips", "50", "--json", "--out", str(tmp_path)])
    assert rc == 0, err
    d = json.loads(out)
    assert d["devices"]["lowrank"] <= d["devices"]["budget"] == 64 * 64
    assert d["lowrank"]["predicted"] < d["baseline"]["predicted"]
    assert (tmp_path / "lowrank.json").exists() and (tmp_path / "lowrank.png").stat().st_size > 1000


def test_lowrank_sigma1_sigma2_and_budget(capsys):
    rc, out, err = _run(capsys, ["optimize", "lowrank", "--profile", "harmonic", "--size", "32", "--sigma1", "0.5",
                                 "--sigma2", "1.0", "--budget", "2000", "--chips", "0", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    assert d["devices"]["lowrank"] <= 2000 and d["sigma1"] == 0.5 and d["sigma2"] == 1.0
    assert d["lowrank"]["monte_carlo"] is None


def _bad_files(tmp_path):
    np.save(tmp_path / "W.npy", np.ones((6, 5)))
    Wn = np.ones((6, 5)); Wn[1, 1] = np.nan
    np.save(tmp_path / "Wnan.npy", Wn)
    np.save(tmp_path / "Rrect.npy", np.ones((6, 5)))
    return tmp_path


@pytest.mark.parametrize("cmd,extra,match", [
    ("predict", ["--matrix", "{d}/W.npy", "--sigma", "0.1", "--rank", "6", "--reps", "1", "1"], "--rank: 6 is not allowed"),
    ("predict", ["--matrix", "{d}/W.npy", "--sigma", "0.1", "--rank", "2", "--reps", "0", "1"], "--reps"),
    ("optimize", ["--matrix", "{d}/W.npy", "--sigma", "0.1", "--budget", "10"], "--budget: 10 fits no scheme"),
    ("predict", ["--matrix", "{d}/W.npy", "--sigma", "0.1", "--rank", "2", "--reps", "1", "1", "--second-moment",
                 "{d}/Rrect.npy"], "--second-moment"),
    ("predict", ["--matrix", "{d}/Wnan.npy", "--sigma", "0.1", "--rank", "2", "--reps", "1", "1"], "NaN"),
    ("predict", ["--matrix", "{d}/W.npy", "--sigma", "nan", "--rank", "2", "--reps", "1", "1"], "--sigma"),
    ("predict", ["--matrix", "{d}/W.npy", "--rank", "2", "--reps", "1", "1"], "--sigma: required"),
    ("predict", ["--matrix", "{d}/W.npy", "--sigma", "0.1"], "--rank"),
    ("predict", ["--matrix", "{d}/W.npy", "--sigma", "0.1", "--rank", "2", "--reps", "1", "1", "--chips", "1"],
     "--chips: 1 is not allowed"),
    ("optimize", ["--profile", "harmonic", "--sigma", "0.1"], "--size"),
    ("optimize", ["--profile", "harmonic", "--size", "8", "--matrix-rank", "9", "--sigma", "0.1"], "--matrix-rank"),
    ("optimize", ["--matrix", "{d}/W.npy", "--sigma", "0.1", "--rank", "2"], "unrecognized arguments: --rank"),
])
def test_lowrank_bad_input(capsys, tmp_path, cmd, extra, match):
    d = _bad_files(tmp_path)
    rc, out, err = _run(capsys, [cmd, "lowrank"] + [a.format(d=d) for a in extra])
    assert rc == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_fig2_small(capsys, tmp_path):
    rc, out, err = _run(capsys, ["paper", "run", "000/fig2", "--out", str(tmp_path), "--param", "size=48",
                                 "--chips", "200", "--param", "n_points=5"])
    assert rc == 0, err
    d = json.loads((tmp_path / "000_fig2.json").read_text())
    norm = np.array(d["normalized"])
    i = int(np.argmin(norm))
    assert d["k"][i] == d["k_opt"] and 0 < i < len(norm) - 1   # U-shape: interior optimum
    for p in d["mc"]:
        assert abs(p["mean"] - p["predicted"]) < 4.5 * p["stderr"]
    assert (tmp_path / "000_fig2.png").stat().st_size > 1000


def test_fig2_bad_input(capsys, tmp_path):
    rc, out, err = _run(capsys, ["paper", "run", "000/fig2", "--out", str(tmp_path), "--param", "size=1"])
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert rc == 2 and len(errors) == 1 and "--param size" in errors[0] and "Traceback" not in err
