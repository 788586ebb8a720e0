"""``memcim irdrop-fig fig4|fig7|fig9a|fig9b|fig10a --out DIR``: paper-002 (Representable Matrices) reproductions."""
from __future__ import annotations

import sys

FIGURES = ("fig4", "fig7", "fig9a", "fig9b", "fig10a")
NETWORK_FIGURES = ("fig9a", "fig9b", "fig10a")


def register(sub) -> None:
    p = sub.add_parser("irdrop-fig", help="reproduce paper 002 Fig. 4 / 7 / 9a / 9b / 10a (IR drop; JSON + PNG)",
                       description="Every figure runs on the irdrop preset (2 kOhm-3 MOhm, 8-bit devices, 1 Ohm "
                                   "wires, 100 Ohm in/out, 0.2 V, 128x128 array pairs). fig4: total / value-range / "
                                   "precision error vs alpha (representable mapping); fig7: max output error vs "
                                   "wire resistance, array size, pairs per weight and cell model for linear / dpe / "
                                   "representable; fig9a: MNIST MLP at circuit level, accuracy vs DAC/ADC bits for "
                                   "each mapping; fig9b: the same for the small reference CNN (mnist-cnn-small); "
                                   "fig10a: accuracy vs random telegraph noise amplitude (default model "
                                   "mnist-mlp-256-128). Writes <fig>.json and <fig>.png into --out.")
    p.add_argument("figure", help="fig4, fig7, fig9a, fig9b or fig10a")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (fig4: 32x32; fig7: sizes 32/64; fig9a/fig9b/fig10a: 300 images, one tuning "
                        "iteration for representable; fig9a: the 784-256-128-10 MLP)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random matrices, inputs and chips")
    p.add_argument("--json", action="store_true", help="print the result's summary as one JSON object")
    p.add_argument("--model", default=None, help="fig9a/fig9b/fig10a: reference model name or torch.save file "
                                                 "(fig9a default mnist-mlp-500-300, quick mnist-mlp-256-128; "
                                                 "fig9b mnist-cnn-small; fig10a mnist-mlp-256-128)")
    p.add_argument("--dataset", default="mnist", help="fig9a/fig9b/fig10a: data set (default mnist)")
    p.add_argument("--images", type=int, default=None,
                   help="fig9a/fig9b/fig10a: evaluated test images (default 1000; quick 300)")
    p.add_argument("--tile", type=int, default=None,
                   help="fig9a/fig9b/fig10a: crossbar array size, rows = cols (array.rows/cols; default 128)")
    p.add_argument("--size", type=int, default=None, help="fig4: matrix size (default 64; quick 32)")
    p.add_argument("--r-wire", type=float, default=None,
                   help="wire segment resistance [Ohm] (wires.r_wire; fig4, fig9a, fig9b, fig10a; fig7 sweeps "
                        "its own; default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.config import preset
    from memcim.experiments import irdrop_figs as F
    from memcim.io import dumps

    if args.figure not in FIGURES:
        raise ValueError(f"figure: {args.figure!r} is not allowed; choose {', '.join(FIGURES)}")
    if args.images is not None and args.images < 1:
        raise ValueError(f"--images: {args.images} is not allowed; must be >= 1")
    if args.tile is not None and not 2 <= args.tile <= 1024:
        raise ValueError(f"--tile: {args.tile} is not allowed; must be in 2..1024")
    if args.size is not None and not 2 <= args.size <= 512:
        raise ValueError(f"--size: {args.size} is not allowed; must be in 2..512")
    if args.seed < 0:
        raise ValueError(f"--seed: {args.seed} is not allowed; must be >= 0")
    settings = {}
    if args.r_wire is not None:
        settings["wires.r_wire"] = args.r_wire
    if args.tile is not None:
        settings.update({"array.rows": args.tile, "array.cols": args.tile})
    try:
        hw = preset("irdrop").set(settings)
    except ValueError as e:  # name the flag, keep the library's message
        flag = "--r-wire" if "r_wire" in str(e) else "--tile"
        raise ValueError(f"{flag}: {e}") from None
    progress = sys.stderr.isatty()
    if args.figure == "fig4":
        kw = {} if args.size is None else {"size": args.size}
        res = F.fig4(args.out, seed=args.seed, quick=args.quick, r_wire=hw.wires.r_wire, **kw)
    elif args.figure == "fig7":
        res = F.fig7(args.out, seed=args.seed, quick=args.quick, progress=progress)
    else:
        kw = {} if args.images is None else {"n_images": args.images}
        fn = {"fig9a": F.fig9a, "fig9b": F.fig9b, "fig10a": F.fig10a}[args.figure]
        res = fn(args.out, model=args.model, dataset=args.dataset, hw=hw, seed=args.seed, quick=args.quick,
                 progress=progress, **kw)
    if args.json:
        print(dumps({"figure": args.figure, "out": str(args.out), "summary": res["summary"]}))
    else:
        print(f"wrote {args.out}/{args.figure}.json and .png")
        for k, v in res["summary"].items():
            print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0
