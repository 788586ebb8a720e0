"""Benchmark: the closed form of module graphs and recurrent layers (issue 15) on the shipped reference
models, against the simulator's Monte Carlo measured in the same run.

For each of mnist-resnet-small, mnist-vit-tiny and mnist-lstm-row, and the presets ``generic`` and
``noisy`` without stuck devices (stuck devices make the outputs heavy-tailed, docs/predict_graph.md):
``memcim.analysis.predict.predict`` on the first ``--images`` MNIST test images (ADCs calibrated on 64
training images), against ``--chips`` chips programmed through ``convert_to_analog`` + ``program``
(float64, seed 11) on the same images with the same calibration. Reported: predicted and Monte Carlo
output MSE (with its standard error), their ratio, both times, and the Monte Carlo chips a 2 %/98 %
estimate would need, ``(2.326 sd / (0.02 mse))^2``, with the closed form's speed-up over that many chips.

    .venv/bin/python bench/bench_predict_graph.py            # writes bench/results/predict_graph.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "results" / "predict_graph.json"
MODELS = ("mnist-resnet-small", "mnist-vit-tiny", "mnist-lstm-row")
PRESETS = ("generic", "noisy")


@torch.no_grad()
def monte_carlo(model, x, hw, cal, chips: int, seed: int) -> dict:
    from memcim.nn.analog import convert_to_analog, program

    ref = model(x)
    analog = convert_to_analog(model, hw, calib_data=cal).eval()
    t = time.process_time()
    mses = []
    for k in range(chips):
        program(analog, seed=seed + k, dtype=torch.float64)
        mses.append(float(((analog(x) - ref) ** 2).mean()))
    m = np.asarray(mses)
    return {"mse": float(m.mean()), "se": float(m.std(ddof=1) / math.sqrt(chips)), "sd": float(m.std(ddof=1)),
            "seconds": time.process_time() - t}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--chips", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from memcim.analysis.predict import predict
    from memcim.config import preset
    from memcim.data.spec import calibration_data, load_data
    from memcim.io import provenance
    from memcim.nn.loading import fit_input
    from memcim.nn.models import get_reference_model

    ds = load_data(f"mnist:test:{a.images}")
    cal = calibration_data("mnist:train", 64).double()
    rows = []
    for name in a.models.split(","):
        model = fit_input(get_reference_model(name), ds.input_shape).double().eval()
        x = ds.x.double()
        for pname in a.presets.split(","):
            hw = preset(pname).without("stuck")
            mc = monte_carlo(model, x, hw, cal, a.chips, a.seed)
            t = time.process_time()
            p = predict(model, x, hw, calib_data=cal)
            tp = time.process_time() - t
            need = (2.326 * mc["sd"] / (0.02 * mc["mse"])) ** 2
            rows.append({"model": name, "preset": pname, "predicted_mse": p.mse_mean, "mc": mc,
                         "ratio": p.mse_mean / mc["mse"], "predict_seconds": tp,
                         "chips_for_2pct_98pct": need,
                         "speedup_vs_2pct_mc": need * mc["seconds"] / a.chips / tp})
            r = rows[-1]
            print(f"{name:20s} {pname:8s} predicted {r['predicted_mse']:.4g}  MC {mc['mse']:.4g} ± {mc['se']:.2g}"
                  f"  ratio {r['ratio']:.2f}  predict {tp:.1f} s  MC {mc['seconds']:.1f} s ({a.chips} chips)"
                  f"  x{r['speedup_vs_2pct_mc']:.1f} vs a 2 %/98 % MC", flush=True)
    out = {"benchmark": "closed form of graphs/recurrent layers vs Monte Carlo, shipped models",
           "config": vars(a), "rows": rows, "provenance": provenance()}
    Path(a.out).write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
