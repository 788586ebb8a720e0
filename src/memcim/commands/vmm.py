"""``memcim vmm``: what a crossbar computes for x @ W, and how wrong it is."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from memcim.io import dumps, load_array, provenance, savefig, write_json


def add_hardware_args(p: argparse.ArgumentParser, default: str = "realistic") -> None:
    """``--config FILE`` / ``--preset NAME`` (shared by commands that take a hardware config)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", metavar="HW.toml", help="hardware config file (.toml or .json)")
    g.add_argument("--preset", metavar="NAME", help=f"named preset (default: {default}; see `memcim config list`)")


def hardware_from_args(args: argparse.Namespace, default: str = "realistic"):
    from memcim.config import HardwareConfig, preset

    if getattr(args, "config", None):
        return HardwareConfig.load(args.config)
    return preset(getattr(args, "preset", None) or default)


def positive_int(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name}: {value} is not allowed; must be an integer >= 1")
    return value


def register(sub) -> None:
    p = sub.add_parser("vmm", help="simulate y = x @ W on a crossbar and report its error",
                       description="Map W (in x out) onto crossbars, program chips, read them with inputs x and "
                                   "report the error against x @ W, the SNR and the contribution of each non-ideality.")
    p.add_argument("--matrix", required=True, metavar="W.npy", help="weight matrix (in, out): .npy, .npz or .csv")
    p.add_argument("--inputs", metavar="X.npy", help="inputs (batch, in); default: x ~ N(0, I)")
    p.add_argument("--batch", type=int, default=1000, help="inputs drawn when --inputs is absent (default 1000)")
    add_hardware_args(p)
    p.add_argument("--trials", type=int, default=10, help="Monte Carlo chips (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-budget", action="store_true", help="skip the per-non-ideality error budget")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--out", metavar="DIR", help="also write result.json, config.toml and error_budget.png here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from memcim.mapping.crossbar import map_matrix
    from memcim.metrics import error_budget, simulate_error

    positive_int("--trials", args.trials)
    positive_int("--batch", args.batch)
    if args.seed < 0:
        raise ValueError(f"--seed: {args.seed} is not allowed; must be >= 0")
    hw = hardware_from_args(args)
    W = load_array(args.matrix, "--matrix", ndim=2)
    if args.inputs:
        x = load_array(args.inputs, "--inputs", ndim=(1, 2))
        x = x[None, :] if x.ndim == 1 else x
        if x.shape[1] != W.shape[0]:
            raise ValueError(f"--inputs: shape {x.shape} does not match --matrix {W.shape}; "
                             f"inputs need {W.shape[0]} columns (x is (batch, in), W is (in, out))")
        inputs = {"source": str(args.inputs), "shape": list(x.shape)}
    else:
        x = np.random.default_rng(args.seed).standard_normal((args.batch, W.shape[0]))
        inputs = {"source": "drawn: x ~ N(0, I)", "shape": list(x.shape), "seed": args.seed}
    mapped = map_matrix(W, hw, calib_inputs=x)
    realized = mapped.realized().numpy()
    result = {
        "command": "vmm", "matrix": {"path": str(args.matrix), "shape": list(W.shape)}, "inputs": inputs,
        "trials": args.trials, "mapping": mapped.summary(),
        "realized_matrix": {"max_abs_error": float(np.abs(realized - W).max()),
                            "relative_frobenius_error": float(np.linalg.norm(realized - W) / max(np.linalg.norm(W), 1e-300))},
        "nonidealities": list(hw.active_nonidealities()),
    }
    if args.no_budget:
        result["error"] = simulate_error(W, x, hw, args.trials, args.seed, dtype=torch.float64)
    else:
        budget = error_budget(W, x, hw, args.trials, args.seed, dtype=torch.float64)
        result["error"] = budget["total"]
        result["contributions"] = budget["contributions"]
        result["interaction_mse"] = budget["interaction_mse"]
    result["config"] = hw.to_dict()
    result["provenance"] = provenance(seed=args.seed)
    if args.out:
        out = Path(args.out)
        write_json(out / "result.json", result)
        hw.save(out / "config.toml")
        if "contributions" in result:
            _plot_budget(result, out / "error_budget.png")
    if args.json:
        print(dumps(result))
    else:
        e = result["error"]
        print(f"W {W.shape[0]}x{W.shape[1]} on {hw.name}: tiles {mapped.n_row_tiles}x{mapped.n_col_tiles}, "
              f"{args.trials} chip(s), inputs {inputs['source']}")
        print(f"  MSE {e['mse']:.4g}   relative error {e['relative_error']:.4g}   SNR {e['snr_db']:.2f} dB")
        for name, c in result.get("contributions", {}).items():
            print(f"  {name:13s} alone: MSE {c['mse']:.4g}  ({100 * c['share']:.1f} % of total)")
        if args.out:
            print(f"  wrote {args.out}/result.json, config.toml" + (", error_budget.png" if "contributions" in result else ""))
    return 0


def _plot_budget(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(result["contributions"])
    mses = [result["contributions"][n]["mse"] for n in names] + [result["error"]["mse"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names + ["all"], mses, color=["C0"] * len(names) + ["C3"])
    ax.set_yscale("log")
    ax.set_ylabel("output MSE")
    ax.set_title(f"error budget: {result['config']['name']}, W {result['matrix']['shape']}")
    ax.tick_params(axis="x", rotation=30)
    savefig(fig, path)
