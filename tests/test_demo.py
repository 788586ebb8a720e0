"""``memcim demo --quick``: its numbers against independent truth, and the page and JSON it writes.

One quick run (about 15 s on 2 cores) is shared by every test of this module.
"""
import json
import math

import numpy as np
import pytest
import torch

from memcim.cli import main

SECTIONS = ("budget", "accuracy", "closed_form", "tile", "optimizer")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["demo", "--quick", "--seed", "0", "--out", str(out), "--json"])
    assert rc == 0, err.getvalue()
    return out, json.loads(buf.getvalue()), err.getvalue()


def test_page_json_and_progress_are_written(demo):
    out, printed, err = demo
    doc = json.loads((out / "demo.json").read_text())
    assert doc["sections"].keys() == printed["sections"].keys() == set(SECTIONS)
    assert doc["config"]["seed"] == 0 and doc["provenance"]["seed"] == 0 and doc["config"]["quick"] is True
    assert doc["provenance"]["memcim_version"]
    page = (out / "index.html").read_text()
    for s in SECTIONS:
        assert (out / f"{s}.png").stat().st_size > 5000
        assert f"src='{s}.png'" in page
    assert "demo.json" in page
    for s in SECTIONS:  # one progress line per section, with its time
        assert f"] {s}: " in err
    # the text table renders from the document alone
    from memcim.experiments.demo import DemoResult, format_table

    text = format_table(DemoResult(doc["config"], doc["sections"], doc["seconds"], doc["provenance"]))
    assert "all together" in text and "representable" in text and "convex" in text


def test_ideal_hardware_gives_the_digital_accuracy(demo):
    from memcim.data.spec import load_data
    from memcim.nn.models import get_reference_model

    _, doc, _ = demo
    acc = doc["sections"]["accuracy"]
    test = load_data(doc["config"]["data"])
    for name, per in acc["models"].items():
        with torch.no_grad():
            truth = float((get_reference_model(name)(test.x).argmax(1) == test.y).float().mean())
        assert per["digital"] == pytest.approx(truth, abs=1e-12)
        ideal = per["presets"]["ideal"]["accuracy"]
        assert ideal["values"] == [truth] * acc["chips"]
        assert per["presets"]["ideal"]["mse"]["mean"] < 1e-6


def test_closed_form_agrees_with_monte_carlo(demo):
    from scipy.stats import t

    cf = demo[1]["sections"]["closed_form"]
    n = cf["chips"]
    assert set(cf["presets"]) == {"generic", "noisy"}
    for name, r in cf["presets"].items():
        assert len(r["mc_values"]) == n
        assert r["mc_stderr"] == pytest.approx(np.std(r["mc_values"], ddof=1) / math.sqrt(n))
        # sampling tolerance (99.9 %, Student t) plus the closed form's documented network budget (10 %)
        tol = t.ppf(0.9995, n - 1) * r["mc_stderr"] + 0.10 * r["mc_mse"]
        assert abs(r["predicted_mse"] - r["mc_mse"]) <= tol, (name, r)


def test_budget_quantization_matches_the_mapped_matrix(demo):
    """The budget's "quantization alone" equals the error of the level-rounded matrix the mapping
    plans (x @ realized - x @ W), computed here without the simulator."""
    from memcim.config import preset
    from memcim.data.spec import load_data
    from memcim.experiments.convex_cim import linear_inputs
    from memcim.mapping.crossbar import map_matrix
    from memcim.nn.models import get_reference_model

    _, doc, _ = demo
    b = doc["sections"]["budget"]
    mlp = get_reference_model("mnist-mlp-256-128")
    x = linear_inputs(mlp, load_data(doc["config"]["data"]).x[: b["inputs"]])["3"]
    W = mlp[3].weight.detach().double().T.numpy()
    Wr = map_matrix(W, preset("generic").only("quantization"), calib_inputs=x).realized().numpy()
    rel = math.sqrt(np.mean((x @ (Wr - W)) ** 2) / np.mean((x @ W) ** 2))
    assert b["contributions"]["quantization"]["relative_error"] == pytest.approx(rel, rel=1e-6)
    assert b["total"]["relative_error"] >= max(c["relative_error"] for c in b["contributions"].values()) * 0.9


def test_tile_and_optimizer_show_their_gains(demo):
    s = demo[1]["sections"]
    m = s["tile"]["methods"]
    assert m["linear"]["relative_error"] > 3 * m["dpe"]["relative_error"]
    assert m["representable"]["relative_error"] < m["dpe"]["relative_error"]
    o = s["optimizer"]
    assert o["predicted_mse_reduction"] > 0.5 and o["simulated_mse_reduction"] > 0.5
    for kind in ("naive", "convex"):     # the closed form tracks the simulation layer by layer
        for layer in o[kind]["layers"].values():
            assert 0.5 < layer["predicted_mse"] / layer["simulated_mse"] < 2
    assert o["convex"]["accuracy"]["mean"] >= o["naive"]["accuracy"]["mean"]


def test_bad_chips_is_one_line(capsys, tmp_path):
    assert main(["demo", "--chips", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--chips" in err[0]
