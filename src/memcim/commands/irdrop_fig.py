"""``memcim irdrop-fig fig4|fig7|fig9a|fig10a --out DIR``: paper-002 (Representable Matrices) reproductions."""
from __future__ import annotations

import sys

FIGURES = ("fig4", "fig7", "fig9a", "fig10a")


def register(sub) -> None:
    p = sub.add_parser("irdrop-fig", help="reproduce paper 002 Fig. 4 / 7 / 9a / 10a (IR drop; JSON + PNG)",
                       description="fig4: total / value-range / precision error vs alpha (representable mapping); "
                                   "fig7: max output error vs wire resistance, array size and device model for "
                                   "linear / dpe / representable; fig9a: MNIST MLP on 128x128 crossbar tiles with "
                                   "IR drop, accuracy vs DAC/ADC bits for each mapping; fig10a: accuracy vs random telegraph noise amplitude "
                                   "(default model mnist-mlp-256-128). Writes <fig>.json and "
                                   "<fig>.png into --out.")
    p.add_argument("figure", help="fig4, fig7, fig9a or fig10a")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (fig7: sizes 32/64; fig9a: 300 images, the 784-256-128-10 MLP, "
                        "one tuning iteration for representable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random matrices and inputs")
    p.add_argument("--json", action="store_true", help="print the result's summary as one JSON object")
    p.add_argument("--model", default=None, help="fig9a/fig10a: reference model name or torch.save file "
                                                 "(fig9a default mnist-mlp-500-300; quick and fig10a: "
                                                 "mnist-mlp-256-128)")
    p.add_argument("--dataset", default="mnist", help="fig9a: test data set (default mnist)")
    p.add_argument("--images", type=int, default=None, help="fig9a: evaluated test images (default 1000; quick 300)")
    p.add_argument("--tile", type=int, default=128, help="fig9a: crossbar tile size (default 128)")
    p.add_argument("--size", type=int, default=None, help="fig4: matrix size (default 64; quick 32)")
    p.add_argument("--r-wire", type=float, default=1.0,
                   help="wire segment resistance [Ohm] (fig4, fig9a, fig10a; fig7 sweeps its own; default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.experiments import irdrop_figs as F
    from memcim.hardware.circuit import Wires
    from memcim.io import dumps

    if args.figure not in FIGURES:
        raise ValueError(f"figure: {args.figure!r} is not allowed; choose {', '.join(FIGURES)}")
    if args.images is not None and args.images < 1:
        raise ValueError(f"--images: {args.images} is not allowed; must be >= 1")
    if not 2 <= args.tile <= 1024:
        raise ValueError(f"--tile: {args.tile} is not allowed; must be in 2..1024")
    if args.size is not None and not 2 <= args.size <= 512:
        raise ValueError(f"--size: {args.size} is not allowed; must be in 2..512")
    wires = Wires(r_wire=args.r_wire)  # validates --r-wire
    if args.figure == "fig4":
        kw = {} if args.size is None else {"size": args.size}
        res = F.fig4(args.out, seed=args.seed, quick=args.quick, r_wire=wires.r_wire, **kw)
    elif args.figure == "fig7":
        res = F.fig7(args.out, seed=args.seed, quick=args.quick)
    else:
        kw = {} if args.images is None else {"n_images": args.images}
        fn = F.fig9a if args.figure == "fig9a" else F.fig10a
        res = fn(args.out, model=args.model, dataset=args.dataset, tile=args.tile, wires=wires, seed=args.seed,
                      quick=args.quick, progress=sys.stderr.isatty(), **kw)
    if args.json:
        print(dumps({"figure": args.figure, "out": str(args.out), "summary": res["summary"]}))
    else:
        print(f"wrote {args.out}/{args.figure}.json and .png")
        for k, v in res["summary"].items():
            print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0
