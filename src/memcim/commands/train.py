"""``memcim train``: train (optionally hardware-aware) a model, with per-epoch checkpoints and resume."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from memcim.commands import _shared

#: flags of the old ``train`` -> their replacement
GONE = {"--hardware-aware": "--hw", "--dataset": "--data DATASET[:train][:N]", "--limit": "--data DATASET:train:N"}

#: A final accuracy below chance + this margin (or 3 binomial standard deviations, if larger) warns.
CHANCE_MARGIN = 0.05


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (optionally hardware-aware), with checkpoints and resume",
        description="Train an architecture (--arch) or fine-tune a model (--init) on --data with Adam and a "
                    "cosine learning rate. With --hw the Linear/Conv2d layers are simulated crossbars while "
                    "training: every mini-batch programs a fresh chip and reads it straight through the "
                    "roundings (hardware-aware training). A checkpoint is written to --out after every epoch; "
                    "the same command run again resumes from it. The result is model.pt (a plain digital "
                    "model, loadable with --model) and train.json. Validation and test accuracy use the "
                    "dataset's val and test splits; with your own X.npy,Y.npy they are measured on the "
                    "training data. A final accuracy near chance prints a warning.")
    p.add_argument("--arch", default=None, metavar="ARCH",
                   help="a fresh model: mlp-500-300, mlp-256-128, mlp-H1-H2-... (ReLU MLP), cnn-small or "
                        "cnn-large (the paper-001 CNNs), resnet-small (residual + depthwise-separable "
                        "blocks), lstm-row (LSTM over image rows) or vit-tiny (vision transformer on 7x7 "
                        "patches); give --arch or --init")
    _shared.add_model(p, required=False, flag="--init",
                 help_text="fine-tune this model instead: a reference model name or a torch.save(model) file")
    p.add_argument("--data", default="mnist:train", metavar="SPEC",
                   help="training data: DATASET[:SPLIT][:N] with split train (the default when omitted) or "
                        "trainval, e.g. mnist:train:5000; or X.npy,Y.npy with your own inputs and integer "
                        "labels (default mnist:train)")
    p.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="train on (x - MEAN) / STD (e.g. 0.1307,0.3081 for MNIST); evaluate the model later "
                        "with the same --normalize")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="directory of the dataset files")
    _shared.add_hw(p, default=None,
                   extra="; given, the training is hardware-aware on it, otherwise digital")
    p.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="epochs in total; a resumed run counts the finished ones (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, metavar="LR",
                   help="initial Adam learning rate, cosine-decayed to 0 over the epochs (default 0.001)")
    p.add_argument("--batch-size", type=int, default=128, metavar="N", help="mini-batch size (default 128)")
    _shared.add_seed(p)
    _shared.add_out(p)
    p._option_string_actions["--out"].help = ("directory of checkpoint.pt, model.pt and train.json; an existing "
                                              "checkpoint there resumes (default train-<arch>-<dataset>[-hwa])")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads while training (default 1: the same bits on every rerun, and never more "
                        "threads than free cores, which slows training many times; more threads help a large "
                        "model on an idle machine but change the last bits)")
    from memcim.commands.simulate import add_gone

    add_gone(p, GONE)
    p.set_defaults(func=run)


def _split_spec(spec: str) -> tuple[str, str]:
    """``mnist`` -> (``mnist:train``, ``train``): a bundled dataset's split defaults to train here."""
    from memcim.data.base import SPLITS
    from memcim.data.spec import is_file_spec

    if is_file_spec(spec):
        return spec, "user"
    parts = [p.strip() for p in str(spec).split(":")]
    split = next((p for p in parts[1:] if p in SPLITS), None)
    if split is None:
        return ":".join([parts[0], "train", *parts[1:]]), "train"
    if split not in ("train", "trainval"):
        raise ValueError(f"data: split {split!r} is not allowed for training; use train or trainval "
                         "(val and test measure the result)")
    return str(spec), split


def near_chance(accuracy: float | None, n_classes: int, n: int) -> bool:
    """True when ``accuracy`` on ``n`` samples is within max(5 points, 3 binomial sd) of 1/n_classes."""
    if accuracy is None or n_classes < 2 or n < 1:
        return False
    p = 1.0 / n_classes
    return accuracy <= p + max(CHANCE_MARGIN, 3.0 * math.sqrt(p * (1 - p) / n))


def training_memory(widths: list[int] | None, n_params: int, batch: int, hardware_aware: bool) -> tuple[int, int]:
    """Estimated bytes of training: ``(for the weights, for one batch's activations)``.

    Weights, gradients and Adam's two moments (4 copies, float32; a hardware-aware run also holds
    each programmed chip's conductances and their gradients, 4 more); activations and their
    gradients of one mini-batch through every width (3 copies).
    """
    weights = 4 * n_params * (8 if hardware_aware else 4)
    acts = 4 * 3 * batch * (sum(widths) if widths else 0)
    return weights, acts


def _mlp_widths(arch: str, sample_shape, n_classes: int) -> list[int] | None:
    import re

    m = re.fullmatch(r"mlp((?:-\d+)+)", str(arch))
    if not m:
        return None
    return [math.prod(sample_shape), *(int(v) for v in m.group(1).strip("-").split("-")), n_classes]


def _check_memory(name: str, widths, n_params: int, batch: int, hardware_aware: bool) -> None:
    from memcim import validate

    weights, acts = training_memory(widths, n_params, batch, hardware_aware)
    validate.memory(name if weights >= acts else "batch_size", weights + acts,
                    f"training ({n_params:,} weights, batches of {batch})")


def run(args: argparse.Namespace) -> int:
    import torch

    from memcim import validate
    from memcim.data.spec import load_data
    from memcim.io import provenance
    from memcim.nn.analog import convert_to_analog, convert_to_digital
    from memcim.nn.loading import fit_input, load_model
    from memcim.nn.models import build_model
    from memcim.nn.train import evaluate_accuracy, train

    if (args.arch is None) == (args.init is None):
        raise ValueError("arch: give exactly one of --arch (a fresh model) or --init (a model to fine-tune)")
    validate.integer("epochs", args.epochs, lo=1, hi=100_000)
    validate.number("lr", args.lr, lo=0, lo_open=True)
    validate.integer("batch_size", args.batch_size, lo=1, hi=10_000_000)
    hw = None
    if args.hw is not None:
        hw = _shared.hardware(args, default=None)
    elif args.settings:
        raise ValueError("set: --set changes a hardware; give --hw PRESET|FILE too (training without --hw is "
                         "digital)")
    spec, split = _split_spec(args.data)
    kw = dict(normalize=args.normalize, root=args.data_dir)
    train_ds = load_data(spec, **kw)
    if split == "user":
        if not train_ds.meta.get("labelled", True):
            raise ValueError(f"data: {args.data!r} has inputs but no labels; training needs X.npy,Y.npy")
        val_ds = test_ds = None
        name = train_ds.name
    else:
        name = train_ds.name
        val_ds = load_data(f"{name}:val", **kw)
        test_ds = load_data(f"{name}:test", **kw)
    lo, hi = float(train_ds.x.min()), float(train_ds.x.max())
    print(f"data: {name}/{train_ds.split}, {len(train_ds)} samples of shape {tuple(train_ds.input_shape)}, "
          f"input range [{lo:.4g}, {hi:.4g}]", file=sys.stderr)
    if args.init:
        model = load_model(args.init, trust_model_file=args.trust_model_file,
                           import_modules=tuple(args.import_modules), name="init")
        _shared.check_finite_model(model, args.init, "init")
        label = Path(str(args.init)).stem
    else:
        from memcim.nn.loading import parse_input_shape

        shape = parse_input_shape(args.input_shape)
        shape = shape if shape is not None and len(shape) == 3 else train_ds.input_shape
        widths = _mlp_widths(args.arch, shape, train_ds.n_classes)
        if widths is not None:   # counted before anything is allocated: mlp-100000000 fails at once
            _check_memory("arch", widths, sum(a * b + b for a, b in zip(widths, widths[1:])),
                          min(args.batch_size, len(train_ds)), hw is not None)
        model = build_model(args.arch, shape, train_ds.n_classes, seed=args.seed)
        label = args.arch
    if args.init:
        widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
        _check_memory("init", [math.prod(train_ds.input_shape), *widths],
                      sum(p.numel() for p in model.parameters()), min(args.batch_size, len(train_ds)), hw is not None)
    model = fit_input(model, train_ds.input_shape, input_shape=args.input_shape)
    out = Path(args.out or f"train-{label}-{name}{'-hwa' if hw else ''}")
    validate.out_dir("out", out)
    net = convert_to_analog(model, hw, seed=args.seed) if hw is not None else model
    try:
        hist = train(net, train_ds, val_ds=val_ds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     seed=args.seed, checkpoint_dir=out, threads=args.threads or 1)
    except FloatingPointError as e:   # a non-finite loss: one line naming --lr, not a traceback
        raise ValueError(f"lr: {' '.join(str(e).split())}") from None
    digital = convert_to_digital(net) if hw is not None else net
    digital.eval()
    final_ds, final_what = (test_ds, "test") if test_ds is not None else (train_ds, "train")
    acc = evaluate_accuracy(digital, final_ds)
    torch.save(digital, out / "model.pt")
    doc = {"arch": args.arch, "init": args.init, "data": args.data, "dataset": name, "split": train_ds.split,
           "normalize": train_ds.meta.get("normalize"), "input_range": [lo, hi],
           "hardware": hw.to_dict() if hw else None, "epochs": args.epochs, "lr": args.lr,
           "batch_size": args.batch_size, "n_train": len(train_ds), "n_classes": train_ds.n_classes,
           "history": hist, "accuracy_on": final_what, "test_accuracy_digital": acc if test_ds is not None else None,
           "train_accuracy_digital": acc if test_ds is None else None,
           "near_chance": near_chance(acc, train_ds.n_classes, len(final_ds)),
           "model_file": str(out / "model.pt"), "provenance": provenance(seed=args.seed)}
    if doc["near_chance"]:
        print(f"memcim train: warning: final {final_what} accuracy {acc * 100:.2f} % is near chance "
              f"({100 / train_ds.n_classes:.2f} % for {train_ds.n_classes} classes); train longer (--epochs), "
              f"change --lr, or check --data/--normalize", file=sys.stderr)

    def text(d) -> str:
        res = f" (resumed after epoch {hist['resumed_from']})" if hist["resumed_from"] else ""
        return (f"trained {label} on {name}/{train_ds.split}{' hardware-aware on ' + hw.name if hw else ''}{res}: "
                f"digital {final_what} accuracy {acc * 100:.2f} %; model in {out / 'model.pt'}")

    args.out = str(out)
    return _shared.emit(args, "train", doc, text=text)
