"""``memcim train``: train (optionally hardware-aware) a model, with per-epoch checkpoints and resume."""
from __future__ import annotations

import argparse
from pathlib import Path

from memcim.io import dumps, provenance, write_json


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model, optionally hardware-aware, with checkpoints and resume",
        description="Train an architecture on a dataset with Adam. With --hardware-aware CONFIG the "
                    "Linear/Conv2d layers inject programming-like weight noise and quantize with "
                    "straight-through gradients, redrawn every mini-batch. A checkpoint is written to "
                    "--out after every epoch; running the same command again resumes from it.")
    p.add_argument("--arch", default=None, help="mlp-500-300, mlp-256-128, mlp-H1-H2-..., cnn-small, cnn-large")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune this model (reference name or torch.save file) instead of a fresh --arch")
    p.add_argument("--trust-model-file", action="store_true", help="allow full unpickling of --init")
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, digits or cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--hardware-aware", default=None, metavar="CONFIG",
                   help="hardware config file or preset name for hardware-aware training")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N samples only")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (checkpoint.pt, model.pt, train.json); default train-<arch>-<dataset>")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from memcim.config import resolve_config
    from memcim.data.datasets import load_dataset
    from memcim.nn.analog import convert_to_analog, convert_to_digital
    from memcim.nn.loading import load_model
    from memcim.nn.models import build_model
    from memcim.nn.train import evaluate_accuracy, train

    if (args.arch is None) == (args.init is None):
        raise ValueError("--arch/--init: give exactly one of them")
    if args.seed < 0:
        raise ValueError(f"--seed: {args.seed} is not allowed; must be >= 0")
    hw = resolve_config(args.hardware_aware) if args.hardware_aware else None
    train_ds = load_dataset(args.dataset, "train", root=args.data_dir, limit=args.limit)
    val_ds = load_dataset(args.dataset, "val", root=args.data_dir)
    test_ds = load_dataset(args.dataset, "test", root=args.data_dir)
    if args.init:
        model = load_model(args.init, trust_model_file=args.trust_model_file)
        label = Path(str(args.init)).stem
    else:
        model = build_model(args.arch, train_ds.input_shape, train_ds.n_classes, seed=args.seed)
        label = args.arch
    out = Path(args.out or f"train-{label}-{args.dataset}{'-hwa' if hw else ''}")
    net = convert_to_analog(model, hw, seed=args.seed) if hw is not None else model
    hist = train(net, train_ds, val_ds=val_ds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 seed=args.seed, checkpoint_dir=out)
    digital = convert_to_digital(net) if hw is not None else net
    digital.eval()
    test_acc = evaluate_accuracy(digital, test_ds)
    torch.save(digital, out / "model.pt")
    doc = {"arch": args.arch, "init": args.init, "dataset": args.dataset, "hardware_aware": hw.to_dict() if hw else None,
           "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "n_train": len(train_ds),
           "history": hist, "test_accuracy_digital": test_acc, "model_file": str(out / "model.pt"),
           "provenance": provenance(seed=args.seed)}
    write_json(out / "train.json", doc)
    if args.json:
        print(dumps(doc))
    else:
        res = f" (resumed after epoch {hist['resumed_from']})" if hist["resumed_from"] else ""
        print(f"trained {label} on {args.dataset}{' hardware-aware on ' + hw.name if hw else ''}{res}: "
              f"digital test accuracy {test_acc * 100:.2f} %; model in {out / 'model.pt'}")
    return 0
