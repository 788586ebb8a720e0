"""Benchmark: the linearised circuit reader for non-linear cells against the Newton reader (the peer).

A block of the reference MLP's first layer (trained weights) on one pair of arrays with paper
002's wires (the ``irdrop`` preset, linear mapping, g_min = 1e-4 S so the TaOx device reaches every
target at 0.2 V), TaOx and 1T1R cells. Both readers read the same programmed chip:

* Newton (``cell.solve = "newton"``): the non-linear tile solved by damped Newton for every input;
* linearised (``cell.solve = "linearized"``): every cell replaced by its conductance at the
  calibration read (every word line at v_read), one linear solve per tile and chip.

Reported: the time of one read of the batch for each (the ratio Newton / linearised) and the
linearised reader's largest error relative to the largest Newton output, on three input kinds
(uniform [0, 1], binary with p = 0.5, sparse binary with p = 0.1) and at the calibration input.

    .venv/bin/python bench/bench_cells.py [--rows 32] [--cols 16] [--batch 20]

Writes bench/results/cells.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from memcim.config import preset
from memcim.io import provenance, write_json
from memcim.mapping.crossbar import map_matrix
from memcim.nn.models import get_reference_model
from memcim.simulate import program


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    first = next(v for k, v in get_reference_model("mnist-mlp-256-128").state_dict().items() if k.endswith("weight"))
    W = first.double().numpy().T[200:200 + a.rows, :a.cols].copy()
    rng = np.random.default_rng(a.seed)
    inputs = {"uniform[0,1]": rng.uniform(0, 1, (a.batch, a.rows)),
              "binary p=0.5": (rng.random((a.batch, a.rows)) < 0.5) * 1.0,
              "sparse binary p=0.1": (rng.random((a.batch, a.rows)) < 0.1) * 1.0,
              "calibration (all ones)": np.ones((1, a.rows))}
    rows = []
    for cell in ("taox", "taox_1t1r"):
        base = preset("irdrop").without("dac", "adc").set({"mapping.method": "linear", "cell.model": cell,
                                                            "device.g_min": 1e-4})
        chips = {s: program(map_matrix(W, base.set("cell.solve", s)), seed=a.seed, dtype=torch.float64)
                 for s in ("newton", "linearized")}
        for name, x in inputs.items():
            out, sec = {}, {}
            for s, chip in chips.items():
                chip.mvm(x[:1])                      # build the tiles (states, cached G_eff) outside the timing
                t0 = time.perf_counter()
                out[s] = chip.mvm(x).numpy()
                sec[s] = time.perf_counter() - t0
            err = float(np.abs(out["linearized"] - out["newton"]).max() / np.abs(out["newton"]).max())
            rows.append({"cell": cell, "inputs": name, "batch": len(x), "newton_s": sec["newton"],
                         "linearized_s": sec["linearized"], "speedup": sec["newton"] / sec["linearized"],
                         "max_rel_error": err})
            r = rows[-1]
            print(f"{cell:10s} {name:24s} newton {r['newton_s']:.3f} s  linearized {r['linearized_s']:.4f} s  "
                  f"({r['speedup']:.0f}x)  max error {100 * err:.2g} % of the largest output", flush=True)
    path = Path(__file__).parent / "results" / "cells.json"
    write_json(path, {"benchmark": "linearised vs Newton circuit reader", "rows": rows,
                      "config": {"rows": a.rows, "cols": a.cols, "batch": a.batch, "preset": "irdrop",
                                 "g_min": 1e-4, "mapping": "linear", "converters": "off"},
                      "provenance": provenance(seed=a.seed)})
    print("wrote", path)


if __name__ == "__main__":
    main()
