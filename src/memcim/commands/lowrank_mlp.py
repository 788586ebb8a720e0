"""``memcim lowrank-mlp``: per-layer low-rank scheme on the reference MNIST MLP, accuracy vs device budget."""
from __future__ import annotations

import sys


def register(sub):
    p = sub.add_parser("lowrank-mlp", help="low-rank scheme per layer of an MLP: accuracy vs device budget",
                       description="Apply the low-rank two-step scheme (paper 000) to every Linear layer of an MLP "
                       "(default: the reference 784-500-300-10 MNIST MLP), with rank/repetitions/split chosen per "
                       "layer by the exact optimizer under a device budget, and report test accuracy against the "
                       "budget next to the baseline mapping. Writes lowrank_mlp.json and lowrank_mlp.png.")
    p.add_argument("--out", metavar="DIR", help="output directory")
    p.add_argument("--model", default="mnist-mlp-500-300", help="reference model name or a torch.save'd MLP file")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--eta", type=float, default=0.3, help="noise std / max|W| per layer (default 0.3)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0],
                   help="device budgets as multiples of in*out per layer (default 0.25 0.5 1 2 4)")
    p.add_argument("--trials", type=int, default=5, help="noisy networks per point (default 5)")
    p.add_argument("--n-test", type=int, help="test images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.experiments.lowrank_mlp import plot_mlp, run_mlp
    from memcim.io import emit_result, require_output

    require_output(args)
    model, name = None, args.model
    from memcim.nn.models import REFERENCE_MODELS

    if args.model not in REFERENCE_MODELS:
        from memcim.nn.loading import load_model

        model = load_model(args.model)
    res = run_mlp(model=model, model_name=name, dataset=args.dataset, eta=args.eta, budgets=args.budgets,
                  trials=args.trials, n_test=args.n_test, seed=args.seed, progress=sys.stderr.isatty())
    if not emit_result(res, out=args.out, name="lowrank_mlp", as_json=args.json, plot=plot_mlp):
        print(f"clean accuracy {res['clean_accuracy']:.4f}")
        print(f"{'budget':>7s} {'baseline':>9s} {'low-rank':>9s} {'hybrid':>9s}  per-layer (k, r1, r2, split)")
        for r in res["rows"]:
            b = f"{r['baseline']['mean']:.4f}" if r["baseline"] else "-"
            print(f"{r['budget_factor']:7.3g} {b:>9s} {r['lowrank']['mean']:9.4f} {r['hybrid']['mean']:9.4f}  "
                  + " ".join(f"({l['k']},{l['r1']},{l['r2']},{l['split'][0]})" for l in r["layers"]))
    return 0
