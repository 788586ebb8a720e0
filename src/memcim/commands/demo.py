"""``memcim demo``: the showcase that ``make demo`` runs."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from memcim.io import provenance, savefig, write_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="the showcase: error budgets of two matrices on realistic hardware, and more",
                       description="Map a Gaussian and a heavy-tailed matrix onto a realistic crossbar, print the error "
                                   "of each non-ideality, and plot error against programming noise.")
    p.add_argument("--out", default="results/demo", metavar="DIR", help="where to write JSON and PNGs (default results/demo)")
    p.add_argument("--preset", default="realistic", help="hardware preset (default realistic)")
    p.add_argument("--trials", type=int, default=5, help="chips per point (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller matrices, batches and test sets")
    p.add_argument("--no-network", action="store_true", help="skip the reference-MLP accuracy section")
    p.set_defaults(func=run)


def matrices(seed: int, quick: bool) -> dict[str, np.ndarray]:
    """A Gaussian matrix and a heavy-tailed one (Student t, 3 dof) shaped like a trained layer."""
    rng = np.random.default_rng(seed)
    n, m = (256, 128) if quick else (784, 256)
    return {"gaussian": rng.standard_normal((n, m)) / np.sqrt(n),
            "heavy_tailed": rng.standard_t(3, size=(n, m)) / np.sqrt(3 * n)}


def run(args: argparse.Namespace) -> int:
    import torch

    from memcim.config import preset
    from memcim.metrics import error_budget, simulate_error

    if args.trials < 1:
        raise ValueError(f"--trials: {args.trials} is not allowed; must be >= 1")
    hw = preset(args.preset)
    out = Path(args.out)
    t0 = time.time()
    rng = np.random.default_rng(args.seed + 1)
    mats = matrices(args.seed, args.quick)
    batch = 256 if args.quick else 1000
    x = rng.standard_normal((batch, next(iter(mats.values())).shape[0]))
    result = {"preset": hw.to_dict(), "trials": args.trials, "batch": batch, "budgets": {}, "sweep": {},
              "provenance": provenance(seed=args.seed)}
    print(f"memcim demo: error budget on the '{hw.name}' preset ({', '.join(hw.active_nonidealities())}), "
          f"{args.trials} chips, {batch} inputs x ~ N(0, I)\n")
    names = list(hw.active_nonidealities())
    header = f"{'non-ideality (alone)':22s}" + "".join(f"{k:>22s}" for k in mats)
    print(header)
    print("-" * len(header))
    for key, W in mats.items():
        result["budgets"][key] = error_budget(W, x, hw, args.trials, args.seed, dtype=torch.float64)
    for n in names:
        row = f"{n:22s}"
        for key in mats:
            c = result["budgets"][key]["contributions"][n]
            row += f"{c['relative_error']:>14.3%} {c['snr_db']:5.1f}dB"
        print(row)
    row = f"{'all together':22s}"
    for key in mats:
        c = result["budgets"][key]["total"]
        row += f"{c['relative_error']:>14.3%} {c['snr_db']:5.1f}dB"
    print("-" * len(header))
    print(row)
    print("(relative RMS error of y = x W, and SNR)\n")

    # error against programming noise
    sigmas = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]
    for key, W in mats.items():
        errs = []
        for s in sigmas:
            h = hw.replace(device={"prog_sigma_rel": s})
            errs.append(simulate_error(W, x, h, args.trials, args.seed, dtype=torch.float64)["relative_error"])
        result["sweep"][key] = {"prog_sigma_rel": sigmas, "relative_error": errs}
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key in mats:
        ax.plot([100 * s for s in sigmas], result["sweep"][key]["relative_error"], "o-", label=key.replace("_", " "))
    ax.set_xlabel("programming noise σ / target conductance [%]")
    ax.set_ylabel("relative RMS error of x·W")
    ax.set_title(f"MVM error vs programming noise ({hw.name} preset)")
    ax.grid(alpha=0.3)
    ax.legend()
    png = savefig(fig, out / "error_vs_programming_noise.png")
    write_json(out / "demo.json", result)
    print(f"wrote {png} and {out / 'demo.json'} in {time.time() - t0:.1f} s")
    if not args.no_network:
        _network_section(args, out)
    return 0


def _network_section(args: argparse.Namespace, out: Path) -> None:
    """Digital against analog accuracy of the reference MNIST MLP (trained on first use, ~1 min)."""
    from memcim.cli import main

    print("\nreference MLP 784-500-300-10 on MNIST: digital vs analog accuracy over chips "
          "(the model trains on first use)")
    argv = ["evaluate", "--model", "mnist-mlp-500-300", "--preset", "ideal", "--preset", args.preset,
            "--preset", "noisy", "--chips", "3" if args.quick else "5", "--seed", str(args.seed),
            "--out", str(out / "evaluate")]
    if args.quick:
        argv += ["--limit", "2000"]
    rc = main(argv)
    if rc:
        raise ValueError(f"evaluate: the network section failed with exit code {rc}")
