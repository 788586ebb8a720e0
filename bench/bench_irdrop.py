"""Benchmark: IR-drop-aware mapping (paper 002) -- mapping time and error against DPE, on uniform random
matrices and on trained weights (the reference MLPs' layers, the small CNN's unfolded convolutions).

Run:  .venv/bin/python bench/bench_irdrop.py [--sizes 64 128] [--quick] [--compare-src /tmp/before/src]
Writes bench/results/irdrop.json and prints a table. ``--compare-src``: the src folder of another checkout
(``git worktree add --detach /tmp/before <commit>``) whose representable mappings are timed in the same
interleaved rounds (``timing/before/...``, ``timing/before_over_now/...``).

Set-up: paper 002 Sec. VI (the ``irdrop`` preset without converters): 1 Ohm wires, 100 Ohm in/out,
2 kOhm - 3 MOhm devices at 8 bits. A random or MLP block of size n is mapped on one n x n array pair;
a CNN layer's unfolded matrix (patch x channels) on the preset's 128 x 128 arrays. Every error is
against the exact circuit: ``plan.realized()`` (the nodal solve of every array).

Errors (``memcim.mapping.irdrop.error_report``): Frobenius ||W^r - W||_F; max output error
max |x (W^r - W)| / max |x W| over inputs x: ``uniform`` = 200 uniform [0, 1] vectors (the paper's
measure), ``data`` = the block's real inputs (MNIST images through the float network: 1000 vectors
not used for the second moment). Methods: ``dpe`` (Hu et al., DAC 2016), ``representable`` (paper
002, with the default ``mapping.rounding = "pairs"``), ``representable/aware`` (the same with the
one-device rounding ``"aware"``, the default before the pair rounding: the before/after of one run) and
``representable+M`` (pairs, tuned on the second moment E[x^T x] of 2000 training inputs of that block,
i.e. the expected output error on the data). Per-column scale (a digital gain per output column after
the ADC; ``--no-columns`` leaves it out): ``dpe/column`` (each column's own DPE range),
``representable/column`` (``mapping.scale = "column"``: the one-scale plan and a per-column plan, each
also with its column gains refitted, the lowest Frobenius error kept among those not raising the predicted
max output error, see :func:`memcim.mapping.irdrop.map_representable`; ``column_scale_choice``: the kept
candidate per array) and ``floor/column``; ratios against DPE's one-scale
plan (the stronger DPE: per-column ranges raise the currents and DPE's IR-drop error) and against
``dpe/column``. ``conductance_sum``: the sum of all programmed conductances, a proxy of the array's read
power (ratios against DPE's plan). Summary: min and geometric mean of every ratio over all blocks and per
block class.

The floor (``FLOOR_DEFINITION``, also written into the JSON): ``floor`` is the pure quantization floor of
the block, :func:`quantization_floor`: ideal wires (no IR drop), the same device levels (8 bits over
[g_min, g_max]), one device of each pair at g_min and the other at the nearest level of
``alpha max(+-W, 0)``, at one scale ``alpha = f (g_max - g_min) / max|W|`` with f on a grid of 126 points
from 0.5 to 3.0 (above 1 the largest weights clip) chosen for the lowest Frobenius error. Without wires
the nearest level is the Frobenius-optimal rounding of every weight, so at one scale no mapping onto these
levels with one device per weight gets below it. ``floor/column``: the same with one f per output column
(of that column's own full-range scale). ``floor/at_representable_alpha``: the same at the representable
plan's own alpha, no search (the scale the IR drop leaves it). Under IR drop the pair rounding (both
devices of a weight programmed, a vernier finer than one device's levels) can get below the floor, so it
is the reference the goals are measured against, not a hard limit; for the max output error the floor's
plan is the Frobenius-optimal one, whose max output error is a reference, not a minimum.

Goal accounting (issue 17 goal 5: DPE error / representable error >= 4x Frobenius and >= 3x max output on
trained weights): DPE's error over the floor's bounds the gain a mapping can be expected to reach on a
block. Per block, method (``representable``, ``representable+M``, ``representable/column``) and metric
(``frobenius_error``, ``max_output_error`` on uniform inputs) ``summary["goals"]`` gives ``gain`` (DPE /
method), ``bound`` (DPE / floor; for ``representable/column``, which may keep either plan, the larger of
DPE / floor and DPE / floor/column), ``bound_at_representable_alpha`` (DPE / floor/at_representable_alpha),
``target = min(goal, bound)`` and ``met`` (gain >= target), ``met_unbounded`` (gain >= goal); also for the
max output error on the block's real inputs (``max_output_error_data``, goal 3x, the measure ``+M`` is tuned
for; not part of ``both``); the flat keys
``goals/<group>/<method>/<metric>/met`` count the blocks meeting the target (``.../both/met``: both metrics)
out of ``goals/<group>/<method>/blocks``.

Times: wall ``time_s`` and the process's CPU time ``cpu_s`` (on the shared 2-core machine the wall time
follows the load of other jobs; the CPU time is what one free core would take, up to cache effects, which
grow with the load: the same 128 x 128 mapping measured 4.5 s at load 3 and 6.3 s at load 5). ``timing``:
the mapping of one random n x n array, ``--time-repeats`` interleaved rounds of DPE (the peer),
representable and representable/column, median and min CPU time (:func:`timing`).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from memcim.config import preset
from memcim.io import provenance, write_json
from memcim.mapping.crossbar import map_matrix
from memcim.mapping.irdrop import error_report

HW = preset("irdrop").without("dac", "adc")
MLPS = ("mnist-mlp-500-300", "mnist-mlp-256-128")
CNN = "mnist-cnn-small"


def _layer_inputs(model, x):
    """(module, inputs) of every Linear / Conv2d (conv inputs unfolded to patches) on images x."""
    import torch.nn.functional as F

    out, hooks = [], []

    def hook(mod, inp, _):
        a = inp[0].detach()
        if isinstance(mod, torch.nn.Conv2d):
            a = F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
            a = a.transpose(1, 2).reshape(-1, a.shape[1])
        out.append((mod, a.double().numpy()))

    for mod in model.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def _matrix(mod) -> np.ndarray:
    w = mod.weight.detach().double()
    return w.reshape(w.shape[0], -1).T.numpy()            # (inputs, outputs)


def trained_cases(size: int, n_images: int = 3000, seed: int = 0, cnn: bool = True):
    """Blocks of trained weights with their real inputs: per MLP layer the central size x size block
    and one at a seeded random offset (narrower when the layer is); each CNN layer's whole unfolded
    matrix. Yields dicts name, W (in, out), X_fit (for the second moment), X_eval, array (rows, cols)."""
    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model

    x = torch.as_tensor(load_dataset("mnist", "train", limit=n_images).x, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    for name in MLPS:
        net = get_reference_model(name).float().eval()
        for li, (mod, X) in enumerate(_layer_inputs(net, x)):
            W = _matrix(mod)
            n, m = W.shape
            r, c = min(size, n), min(size, m)
            for tag, (i0, j0) in (("center", ((n - r) // 2, (m - c) // 2)),
                                  ("random", (int(rng.integers(0, n - r + 1)), int(rng.integers(0, m - c + 1))))):
                yield {"name": f"{name}/fc{li + 1}/{tag}", "W": W[i0:i0 + r, j0:j0 + c],
                       "X_fit": X[:2000, i0:i0 + r], "X_eval": X[2000:, i0:i0 + r], "array": (size, size)}
    if cnn:
        net = get_reference_model(CNN).float().eval()
        for li, (mod, X) in enumerate(_layer_inputs(net, x[:300])):
            if not isinstance(mod, torch.nn.Conv2d):
                continue
            X = X[rng.permutation(len(X))[:3000]]
            k = 2 * len(X) // 3
            yield {"name": f"{CNN}/conv{li + 1}", "W": _matrix(mod), "X_fit": X[:k], "X_eval": X[k:],
                   "array": (128, 128)}


def map_case(W, array, method, second_moment=None, X_eval=None, rounding="pairs", scale="matrix"):
    """``map_matrix`` of ``W`` on ``array``-sized arrays with ``method``; ``scale="column"``: one alpha per
    array column (``mapping.scale``, a digital gain per column after the ADC). Errors from the plan's
    ``realized()`` (the nodal solve), times in wall and CPU seconds."""
    hw = HW.set({"mapping.method": method, "array.rows": array[0], "array.cols": array[1],
                 "mapping.rounding": rounding, "mapping.scale": scale})
    t0, c0 = time.perf_counter(), time.process_time()
    plan = map_matrix(W, hw, second_moment=second_moment)
    Wr = plan.realized().numpy()
    t, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"time_s": t, "cpu_s": cpu, "conductance_sum": float(plan.g_pos.sum() + plan.g_neg.sum())}
    if scale == "matrix":
        out["alpha"] = float(plan.scale[0, 0])
    else:
        a = plan.scale[:, :W.shape[1]]
        out.update(alpha_median=float(torch.median(a)), alpha_min=float(a.min()), alpha_max=float(a.max()))
        tiles = plan.info.get("tiles") or []
        if tiles and "column_scale" in tiles[0]:    # representable: which plan each array kept (one / column,
            # "+gain": with its column gains refitted)
            out["column_scale_choice"] = [t["column_scale"] for t in tiles]
    out.update(_errors(W, Wr, X_eval))
    return out


def _errors(W, Wr, X_eval=None) -> dict:
    rep = error_report(W, Wr)
    out = {"frobenius_error": rep["frobenius_error"], "relative_error": rep["relative_error"],
           "max_output_error": rep["max_output_error"]}
    if X_eval is not None:
        out["max_output_error_data"] = error_report(W, Wr, inputs=X_eval)["max_output_error"]
        out["rms_output_error_data"] = float(np.sqrt(np.mean((X_eval @ (Wr - W)) ** 2))
                                             / np.sqrt(np.mean((X_eval @ W) ** 2)))
    return out


def _floor_realized(W, a):
    """One device of each pair at g_min, the other at the nearest level of ``a max(+-W, 0)`` (a: one scale
    or one per column), ideal wires: the realized matrix."""
    dev = HW.device
    step, top = dev.level_step, dev.levels - 1
    kp = np.clip(np.rint(a * np.maximum(W, 0) / step), 0, top)
    kn = np.clip(np.rint(a * np.maximum(-W, 0) / step), 0, top)
    return (kp - kn) * step / a


def quantization_floor(W, X_eval=None, factors=np.linspace(0.5, 3.0, 126), column=False) -> dict:
    """The pure quantization floor: ideal wires, the same device levels, one device of each pair at g_min
    and the other at the nearest level of ``alpha max(+-W, 0)``, at the scale alpha (from half to three
    times the full-range scale ``(g_max - g_min) / max|W|``, above it the largest weights clip) with the
    lowest Frobenius error. No wires means no IR drop to compensate and no pair vernier (both devices
    of a pair move their weight by exactly one level step, so joint programming of the pair adds no
    finer values: the levels of ``kp - kn`` are those of one device). With ideal wires and one scale,
    the nearest level is also the Frobenius-optimal rounding element by element, so this is the least
    Frobenius error any mapping reaches on these levels at one scale without IR drop.
    ``column``: one scale per output column (each column's best factor of its own full-range scale)."""
    dev = HW.device
    if column:
        cm = np.max(np.abs(W), axis=0)
        a_full = (dev.g_max - dev.g_min) / np.where(cm > 0, cm, np.max(np.abs(W)))
        errs = np.array([np.sum((_floor_realized(W, f * a_full) - W) ** 2, axis=0) for f in factors])
        f = factors[np.argmin(errs, axis=0)]
        out = {"alpha_over_full_range_median": float(np.median(f))}
        out.update(_errors(W, _floor_realized(W, f * a_full), X_eval))
        return out
    a_full = (dev.g_max - dev.g_min) / np.max(np.abs(W))
    f = min(factors, key=lambda f: np.linalg.norm(_floor_realized(W, f * a_full) - W))
    out = {"alpha_over_full_range": float(f), "alpha": float(f * a_full)}
    out.update(_errors(W, _floor_realized(W, f * a_full), X_eval))
    return out


def floor_at_scale(W, alpha, X_eval=None) -> dict:
    """The one-device floor (as :func:`quantization_floor`, ideal wires, nearest level) at a given scale:
    at the representable mapping's own alpha it is what one device per weight could reach at the scale the
    IR drop leaves (the pair vernier is what gets below it)."""
    out = {"alpha": float(alpha)}
    out.update(_errors(W, _floor_realized(W, alpha), X_eval))
    return out


FLOOR_DEFINITION = (
    "floor: ideal wires (no IR drop), the same device levels, one device of each pair at g_min and the other "
    "at the nearest level of alpha*max(+-W, 0), one scale alpha = f*(g_max - g_min)/max|W|, f on 126 points "
    "in [0.5, 3.0] chosen for the lowest Frobenius error (f > 1 clips the largest weights); floor/column: one "
    "f per output column (of its own full-range scale); floor/at_representable_alpha: at the representable "
    "plan's alpha. The least Frobenius error of one device per weight at one scale on ideal wires; the pair "
    "rounding under IR drop can go below it (a reference, not a hard limit). Goal bound = DPE error / floor "
    "error (representable/column: the larger of the one-scale and per-column floors' bounds); "
    "target = min(goal, bound), goal 4x Frobenius and 3x max output error (uniform inputs).")
GOALS = {"frobenius_error": 4.0, "max_output_error": 3.0}
#: the floors bounding each method's gain (a method that may keep either plan: the larger bound)
GOAL_FLOORS = {"representable": ("floor",), "representable+M": ("floor",),
               "representable/column": ("floor", "floor/column")}


def goal_accounting(row) -> dict:
    """Per method and metric: the gain over DPE, its floor bound, the target min(goal, bound) and whether it is
    met (see the module docstring); ``both``: both metrics met."""
    out = {}
    for m, floors in GOAL_FLOORS.items():
        if m not in row:
            continue
        out[m] = {}
        for k, goal in {**GOALS, "max_output_error_data": GOALS["max_output_error"]}.items():
            if k not in row[m] or k not in row["dpe"]:
                continue
            gain = row["dpe"][k] / row[m][k]
            bound = max(row["dpe"][k] / row[f][k] for f in floors if f in row)
            e = {"gain": gain, "goal": goal, "bound": bound}
            if "floor/at_representable_alpha" in row:
                e["bound_at_representable_alpha"] = row["dpe"][k] / row["floor/at_representable_alpha"][k]
            e["target"] = min(goal, bound)
            e["met"] = bool(gain >= e["target"])
            e["met_unbounded"] = bool(gain >= goal)
            out[m][k] = e
        out[m]["both"] = {"met": all(out[m][k]["met"] for k in GOALS),
                          "met_unbounded": all(out[m][k]["met_unbounded"] for k in GOALS)}
    return out


METHODS_VS_DPE = ("representable", "representable+M", "representable/aware", "floor", "representable/column",
                  "floor/column", "floor/at_representable_alpha")


def _ratios(row, ref="dpe", methods=METHODS_VS_DPE):
    keys = ("frobenius_error", "max_output_error", "max_output_error_data", "rms_output_error_data")
    out = {f"{k}_{ref}_over_{m}": row[ref][k] / row[m][k] for m in methods if m in row for k in keys
           if k in row[m] and row[m][k] > 0}
    for m in ("representable", "representable+M", "representable/column"):   # read power in the array,
        if m in row and "conductance_sum" in row[m] and "conductance_sum" in row[ref]:   # relative to DPE's
            out[f"conductance_sum_{m}_over_{ref}"] = row[m]["conductance_sum"] / row[ref]["conductance_sum"]
    return out


def _all_ratios(row):
    out = _ratios(row)
    if "dpe/column" in row:         # the per-column peer: DPE with its own per-column scales
        out.update(_ratios(row, ref="dpe/column", methods=("representable/column",)))
        # and the better DPE of the two, error by error (per-column ranges help DPE only where the IR drop
        # is negligible: the CNN's 9 x 2 conv1)
        best = {k: min(row["dpe"][k], row["dpe/column"][k]) for k in row["dpe"]
                if k.endswith("_error") or k.endswith("_error_data")}
        out.update(_ratios({**row, "dpe/best": best}, ref="dpe/best", methods=("representable/column",)))
    return out


def _add_columns(row, W, array, X_eval=None):
    """The per-column-scale variants of one block (``--no-columns`` leaves them out)."""
    row["dpe/column"] = map_case(W, array, "dpe", X_eval=X_eval, scale="column")
    row["representable/column"] = map_case(W, array, "representable", X_eval=X_eval, scale="column")
    row["floor/column"] = quantization_floor(W, X_eval=X_eval, column=True)


def _print(name, row):
    r = row["ratios"]
    fro = r.get("frobenius_error_dpe_over_representable", 0)
    print(f"{name:<38} cpu_rep {row['representable']['cpu_s']:5.2f}s  fro x{fro:5.1f}"
          f" (floor x{r.get('frobenius_error_dpe_over_floor', 0):5.1f}"
          f", at its alpha x{r.get('frobenius_error_dpe_over_floor/at_representable_alpha', 0):4.1f})"
          + (f"  column: fro x{r.get('frobenius_error_dpe_over_representable/column', 0):5.1f}"
             f" maxout x{r.get('max_output_error_dpe_over_representable/column', 0):5.1f}"
             f" (floor x{r.get('frobenius_error_dpe_over_floor/column', 0):5.1f},"
             f" vs dpe/column x{r.get('frobenius_error_dpe/column_over_representable/column', 0):5.1f})"
             if "representable/column" in row else "")
          + f""
          f"  maxout x{r.get('max_output_error_dpe_over_representable', 0):5.1f}"
          + (f"  data-maxout x{r['max_output_error_data_dpe_over_representable']:5.1f}"
             f" (+M x{r.get('max_output_error_data_dpe_over_representable+M', 0):5.1f}, fro x"
             f"{r.get('frobenius_error_dpe_over_representable+M', 0):4.1f})"
             if "max_output_error_data_dpe_over_representable" in r else ""), flush=True)


def scale_check(factors=(1.0, 1.1, 1.2), seed: int = 0) -> dict:
    """Representable mapping at fixed scales above DPE's (clipping the largest weights for finer levels)
    on the first trained block (mnist-mlp-500-300 fc1, 64x64 centre): Frobenius and max output error
    per factor of DPE's scale, errors from the circuit (``--scale-check``)."""
    from memcim.experiments.irdrop_figs import _with_targets
    from memcim.mapping.irdrop import map_block

    case = next(trained_cases(64, seed=seed, cnn=False))
    W = case["W"]
    hw = HW.set({"mapping.method": "representable", "array.rows": 64, "array.cols": 64})
    template = map_matrix(W, hw.set("mapping.method", "linear"))
    a_dpe = map_case(W, (64, 64), "dpe")["alpha"]
    rows = []
    for f in factors:
        gp, gn, _, _ = map_block(W, hw.wires, hw.device, hw.mapping, alpha=f * a_dpe)
        Wr = _with_targets(template, gp, gn, f * a_dpe).realized().numpy()
        rows.append({"factor_of_dpe_scale": f, **_errors(W, Wr)})
        print(f"{case['name']}: alpha = {f:.2f} x DPE's  Frobenius {rows[-1]['frobenius_error']:.4f}  "
              f"max output {rows[-1]['max_output_error']:.4f}")
    return {"block": case["name"], "alpha_dpe": a_dpe, "rows": rows}


_CHILD = """
import sys, time
import numpy as np
from memcim.config import preset
from memcim.mapping.irdrop import map_block
n, seed, column, sizes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4].split(",")
rng = np.random.default_rng(seed + 1)
for m in map(int, sizes):            # the matrices of timing(), drawn in the same order
    W = rng.uniform(-1, 1, (m, m))
    if m == n:
        break
hw = preset("irdrop").without("dac", "adc").set({"array.rows": n, "array.cols": n, "mapping.method": "representable"})
kw = {"column_scale": True} if column else {}
map_block(W[:8, :8], hw.wires, hw.device, hw.mapping, **kw)
c0 = time.process_time()
map_block(W, hw.wires, hw.device, hw.mapping, **kw)
print(time.process_time() - c0)
"""


def _time_other_tree(src: str, n: int, seed: int, column: bool, sizes) -> float:
    """CPU time of the same ``map_block`` call (:func:`timing`'s matrix) with the memcim package of another
    source tree (``--compare-src``, e.g. a ``git worktree`` of an older commit), in a child process."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(seed), "1" if column else "0",
                        ",".join(map(str, sizes))], env=env,
                       capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.abspath(src)))
    return float(r.stdout.strip().splitlines()[-1])


def _commit_of(src: str) -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def timing(sizes, repeats: int = 3, seed: int = 0, columns: bool = True, compare_src: str | None = None) -> dict:
    """CPU time of one array's mapping (``map_block``, not memoised) on a uniform random n x n matrix per
    size, ``repeats`` rounds interleaving the methods (DPE, the peer, first): median and min per method.
    The per-block ``cpu_s`` of the tables is one measurement each and follows the other jobs' load.
    ``compare_src``: also the representable mappings of another source tree (its ``src`` folder) on the same
    matrix, interleaved (``before/...``), each in a child process (:func:`_time_other_tree`), and this tree's
    through the same child process (``child/...``: a fresh process pays its first-touch memory costs, so the
    before/now ratios compare child with child)."""
    import memcim
    from memcim.mapping.irdrop import map_block

    rng = np.random.default_rng(seed + 1)
    out = {}
    for n in sizes:
        W = rng.uniform(-1, 1, (n, n))
        hw = HW.set({"array.rows": n, "array.cols": n})
        variants = [("dpe", "dpe", {}), ("representable", "representable", {})]
        if columns:
            variants.append(("representable/column", "representable", {"column_scale": True}))
        if compare_src:     # the other tree and this one, both through the same child process
            own = os.path.dirname(os.path.dirname(os.path.abspath(memcim.__file__)))
            for tag, src in (("before", compare_src), ("child", own)):
                variants += [(f"{tag}/representable", None, {"column": False, "src": src})] + (
                    [(f"{tag}/representable/column", None, {"column": True, "src": src})] if columns else [])
        ts = {name: [] for name, _, _ in variants}
        for _ in range(repeats):
            for name, method, kw in variants:
                if method is None:
                    ts[name].append(_time_other_tree(n=n, seed=seed, sizes=sizes, **kw))
                    continue
                c0 = time.process_time()
                map_block(W, hw.wires, hw.device, hw.set("mapping.method", method).mapping, **kw)
                ts[name].append(time.process_time() - c0)
        out[f"{n}x{n}"] = {name: {"cpu_s_median": float(np.median(v)), "cpu_s_min": float(np.min(v)), "cpu_s": v}
                           for name, v in ts.items()}
        print(f"timing {n}x{n}: " + "  ".join(f"{k} {np.median(v):.2f}s (min {np.min(v):.2f})"
                                              for k, v in ts.items()), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale-check", action="store_true",
                    help="only: representable at 1.0/1.1/1.2x DPE's scale on one trained block "
                         "(bench/results/irdrop_scale.json)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--random", type=int, default=2, help="uniform random matrices per size")
    ap.add_argument("--quick", action="store_true", help="64 only, one random matrix, MLP blocks only")
    ap.add_argument("--no-columns", dest="columns", action="store_false",
                    help="leave out the per-column-scale variants (dpe/column, representable/column, floor/column)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-repeats", type=int, default=3,
                    help="interleaved repeats of the mapping-time measurement (0: leave it out)")
    ap.add_argument("--compare-src", default=None,
                    help="the src folder of another memcim tree (e.g. git worktree add --detach /tmp/before <rev>; "
                         "/tmp/before/src): its representable mappings timed in the same interleaved rounds")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "irdrop.json"))
    a = ap.parse_args()
    if a.scale_check:
        doc = {"provenance": provenance(seed=a.seed), "hardware": HW.to_dict(), **scale_check(seed=a.seed)}
        print("wrote", write_json(os.path.join(os.path.dirname(a.out), "irdrop_scale.json"), doc))
        return
    if a.quick:
        a.sizes, a.random = [64], 1
    res = {"provenance": provenance(seed=a.seed, load_average=os.getloadavg(), cpus=os.cpu_count()),
           "hardware": HW.to_dict(), "floor_definition": FLOOR_DEFINITION, "goals_definition": GOALS,
           "random": [], "trained": [], "summary": {}}
    rng = np.random.default_rng(a.seed)
    for n in a.sizes:
        for k in range(a.random):
            W = rng.uniform(-1, 1, (n, n))
            row = {"name": f"uniform/{n}/{k}", "size": [n, n]}
            for m in ("dpe", "representable"):
                row[m] = map_case(W, (n, n), m)
            row["representable/aware"] = map_case(W, (n, n), "representable", rounding="aware")
            row["floor"] = quantization_floor(W)
            row["floor/at_representable_alpha"] = floor_at_scale(W, row["representable"]["alpha"])
            if a.columns:
                _add_columns(row, W, (n, n))
            row["ratios"] = _all_ratios(row)
            _print(row["name"], row)
            res["random"].append(row)
    for n in a.sizes:
        for case in trained_cases(n, seed=a.seed, cnn=not a.quick and n == max(a.sizes)):
            W = case["W"]
            row = {"name": case["name"], "size": list(W.shape), "array": list(case["array"])}
            M = case["X_fit"].T @ case["X_fit"] / len(case["X_fit"])
            for m in ("dpe", "representable"):
                row[m] = map_case(W, case["array"], m, X_eval=case["X_eval"])
            row["representable/aware"] = map_case(W, case["array"], "representable", X_eval=case["X_eval"],
                                                  rounding="aware")
            row["representable+M"] = map_case(W, case["array"], "representable", second_moment=M,
                                              X_eval=case["X_eval"])
            row["floor"] = quantization_floor(W, X_eval=case["X_eval"])
            row["floor/at_representable_alpha"] = floor_at_scale(W, row["representable"]["alpha"], case["X_eval"])
            if a.columns:
                _add_columns(row, W, case["array"], X_eval=case["X_eval"])
            row["ratios"] = _all_ratios(row)
            _print(row["name"], row)
            res["trained"].append(row)
    if a.time_repeats:
        res["timing"] = timing(a.sizes, a.time_repeats, a.seed, a.columns, a.compare_src)
        if a.compare_src:
            res["timing_compare"] = {"src": os.path.abspath(a.compare_src), "commit": _commit_of(a.compare_src)}
    s = res["summary"]
    for group in ("random", "trained"):
        rows = res[group]
        if not rows:
            continue
        classes = {group: rows}
        for r in rows:                                  # block classes: mlp/fcK/<array>, cnn, uniform/<n>
            p = r["name"].split("/")
            cls = (f"mlp/{p[1]}/{r['array'][0]}" if p[0].startswith("mnist-mlp") else "cnn" if "cnn" in p[0]
                   else f"{p[0]}/{p[1]}")
            classes.setdefault(f"{group}/{cls}", []).append(r)
        for cname, crows in classes.items():
            for key in sorted({k for r in crows for k in r["ratios"]}):
                vals = [r["ratios"][key] for r in crows if key in r["ratios"]]
                s[f"{cname}/{key}/min"] = float(np.min(vals))
                s[f"{cname}/{key}/geomean"] = float(np.exp(np.mean(np.log(vals))))
        for n in a.sizes:
            for key in ("time_s", "cpu_s"):
                for m in ("representable", "representable/column"):
                    ts = [r[m][key] for r in rows if r["size"] == [n, n] and m in r]
                    if ts:
                        s[f"{group}/{m}_{key}/{n}x{n}/max"] = float(np.max(ts))
    for size, row in res.get("timing", {}).items():
        for m, v in row.items():
            s[f"timing/{m}_cpu_s_median/{size}"] = v["cpu_s_median"]
        for m in ("representable", "representable/column"):
            if f"before/{m}" in row and f"child/{m}" in row:
                s[f"timing/before_over_now/{m}/{size}"] = (row[f"before/{m}"]["cpu_s_median"]
                                                           / row[f"child/{m}"]["cpu_s_median"])
        if "representable/column" in row:
            s[f"timing/representable/column_over_representable/{size}"] = (
                row["representable/column"]["cpu_s_median"] / row["representable"]["cpu_s_median"])
    goals = {}
    for group in ("random", "trained"):
        # mapping.scale = "column" against the default (its one-scale plan is the default's): arrays that kept
        # the per-column plan, and blocks whose Frobenius / max output error the column mode raised
        rows = [r for r in res[group] if "representable/column" in r]
        if rows:
            choices = [c for r in rows for c in r["representable/column"].get("column_scale_choice", [])]
            s[f"column/{group}/arrays_per_column_plan"] = sum(c.startswith("column") for c in choices)
            s[f"column/{group}/arrays_gains_refitted"] = sum(c.endswith("+gain") for c in choices)
            s[f"column/{group}/arrays"] = sum(len(r["representable/column"].get("column_scale_choice", []))
                                              for r in rows)
            for k in ("frobenius_error", "max_output_error"):
                s[f"column/{group}/{k}_above_one_scale/blocks"] = sum(
                    r["representable/column"][k] > r["representable"][k] * (1 + 1e-9) for r in rows)
            s[f"column/{group}/blocks"] = len(rows)
        for r in res[group]:
            g = goals[r["name"] + (f"@{r['array'][0]}" if "array" in r else "")] = goal_accounting(r)
            for m, per in g.items():
                s[f"goals/{group}/{m}/blocks"] = s.get(f"goals/{group}/{m}/blocks", 0) + 1
                for k, e in per.items():
                    for flag in ("met", "met_unbounded"):
                        key = f"goals/{group}/{m}/{k}/{flag}"
                        s[key] = s.get(key, 0) + int(e[flag])
    for k, v in s.items():
        print(f"{k:<80} {v:8.3f}")
    s["goals"] = goals
    print("goals (gain / target, * = met):")
    for name, g in goals.items():
        print(f"  {name:<44}" + "  ".join(
            f"{m:<20} " + " ".join(f"{g[m][k]['gain']:5.2f}/{g[m][k]['target']:4.2f}{'*' if g[m][k]['met'] else ' '}"
                                   for k in GOALS) for m in g))
    res["load_average_end"] = list(os.getloadavg())
    print("wrote", write_json(a.out, res))


if __name__ == "__main__":
    main()
