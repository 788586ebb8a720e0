"""The goal accounting of bench/bench_irdrop.py (issue 17 goal 5): gain over DPE, floor bound, target
min(goal, bound) and met, on a block whose errors are written out by hand."""
import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "bench_irdrop.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_irdrop_for_test", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_goal_accounting_by_hand(bench):
    """DPE Frobenius 1.0, max output 0.3. Floor 0.5 / 0.05 (bounds 2x / 6x), per-column floor 0.1 / 0.2
    (10x / 1.5x), floor at the representable alpha 0.4 / 0.1 (2.5x / 3x). representable 0.4 / 0.09: gains
    2.5x (target min(4, 2) = 2: met, unbounded 4x not) and 3.33x (target 3: met). representable/column
    0.3 / 0.12: bound the larger of the two floors' (10x Frobenius, 6x max output), gains 3.33x (target 4:
    not met) and 2.5x (target 3: not met)."""
    row = {"dpe": {"frobenius_error": 1.0, "max_output_error": 0.3},
           "floor": {"frobenius_error": 0.5, "max_output_error": 0.05},
           "floor/column": {"frobenius_error": 0.1, "max_output_error": 0.2},
           "floor/at_representable_alpha": {"frobenius_error": 0.4, "max_output_error": 0.1},
           "representable": {"frobenius_error": 0.4, "max_output_error": 0.09},
           "representable/column": {"frobenius_error": 0.3, "max_output_error": 0.12}}
    g = bench.goal_accounting(row)
    f, m = g["representable"]["frobenius_error"], g["representable"]["max_output_error"]
    assert f["gain"] == pytest.approx(2.5) and f["bound"] == pytest.approx(2.0) and f["target"] == pytest.approx(2.0)
    assert f["met"] and not f["met_unbounded"]
    assert f["bound_at_representable_alpha"] == pytest.approx(2.5)
    assert m["gain"] == pytest.approx(10 / 3) and m["bound"] == pytest.approx(6.0) and m["target"] == 3.0 and m["met"]
    assert g["representable"]["both"] == {"met": True, "met_unbounded": False}
    fc, mc = g["representable/column"]["frobenius_error"], g["representable/column"]["max_output_error"]
    assert fc["bound"] == pytest.approx(10.0) and fc["target"] == 4.0 and not fc["met"]
    assert mc["bound"] == pytest.approx(6.0) and mc["target"] == 3.0 and not mc["met"]
    assert "representable+M" not in g
    assert "floor" in bench.FLOOR_DEFINITION and "min(goal, bound)" in bench.FLOOR_DEFINITION
