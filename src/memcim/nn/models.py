"""Reference models of the papers, and a cache of trained copies outside the repository.

Architectures (``build_model(arch, input_shape)``):

- ``mlp-500-300``: the 784-500-300-10 ReLU MLP of paper 002 (any ``mlp-H1-H2-...`` works);
- ``mlp-256-128``: the 784-256-128-10 ReLU MLP, the 3-layer MLP of paper 003;
- ``cnn-small`` / ``cnn-large``: the CNNs of paper 001: five pairs of 3x3 convolution (unit stride,
  padding 1) with Softplus and 2x2 average pooling, 2-4-8-16-16 (small) or 16-32-64-128-128 (large)
  filters, then one linear layer. Five halvings need a 32x32 input, so a smaller input (MNIST's
  28x28) is zero-padded to 32x32 by a leading ``ZeroPad2d`` layer (kept digital on conversion).

Reference models (``get_reference_model(name)``) are trained by memcim on first use, on the CPU,
with a fixed seed, and cached in ``$MEMCIM_CACHE/models`` (default ``~/.cache/memcim/models``).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

ARCHS = ("mlp-500-300", "mlp-256-128", "cnn-small", "cnn-large", "mlp-H1-H2-...")

#: name -> training recipe. ``test_accuracy`` is filled in the cache file after training.
REFERENCE_MODELS = {
    "mnist-mlp-500-300": dict(arch="mlp-500-300", dataset="mnist", epochs=20, lr=1e-3,
                              batch_size=128, weight_decay=0.0, seed=0,
                              paper="002 (Representable Matrices)"),
    "mnist-mlp-256-128": dict(arch="mlp-256-128", dataset="mnist", epochs=20, lr=1e-3,
                              batch_size=128, weight_decay=0.0, seed=0,
                              paper="003 (Mathematical Optimization of Analog CiM)"),
    "mnist-cnn-small": dict(arch="cnn-small", dataset="mnist", epochs=20, lr=3e-3,
                            batch_size=128, weight_decay=0.0, seed=0,
                            paper="001 (MemSE), trained on MNIST while CIFAR-10 is absent"),
}


def cache_dir() -> Path:
    """Directory of cached models: ``$MEMCIM_CACHE/models`` or ``~/.cache/memcim/models``."""
    env = os.environ.get("MEMCIM_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "memcim"
    return base / "models"


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _cnn(channels: tuple[int, ...], input_shape: tuple[int, int, int], n_classes: int) -> nn.Sequential:
    c, h, w = input_shape
    if h > 32 or w > 32:
        raise ValueError(f"input_shape: {input_shape} is too large for the paper-001 CNN; "
                         "allowed: height and width <= 32")
    layers: list[nn.Module] = []
    if (h, w) != (32, 32):
        top, left = (32 - h) // 2, (32 - w) // 2
        layers.append(nn.ZeroPad2d((left, 32 - w - left, top, 32 - h - top)))
    prev = c
    for ch in channels:
        layers += [nn.Conv2d(prev, ch, kernel_size=3, stride=1, padding=1), nn.Softplus(),
                   nn.AvgPool2d(2)]
        prev = ch
    layers += [nn.Flatten(), nn.Linear(prev, n_classes)]
    return nn.Sequential(*layers)


def build_model(arch: str, input_shape=(1, 28, 28), n_classes: int = 10, *, seed: int = 0) -> nn.Sequential:
    """Build an untrained model with a seeded initialisation (the global RNG is left untouched).

    Parameters
    ----------
    arch : ``mlp-500-300``, ``mlp-256-128``, any ``mlp-H1-H2-...``, ``cnn-small`` or ``cnn-large``.
    input_shape : (C, H, W) of one sample.
    n_classes : number of outputs.
    seed : seed of the weight initialisation.

    Returns
    -------
    torch.nn.Sequential
    """
    input_shape = tuple(int(v) for v in input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = re.fullmatch(r"mlp((?:-\d+)+)", str(arch))
        if m:
            hidden = [int(v) for v in m.group(1).strip("-").split("-")]
            if min(hidden) < 1:
                raise ValueError(f"--arch: {arch!r} has a zero-width layer")
            n_in = input_shape[0] * input_shape[1] * input_shape[2]
            return _mlp([n_in, *hidden, n_classes])
        if arch == "cnn-small":
            return _cnn((2, 4, 8, 16, 16), input_shape, n_classes)
        if arch == "cnn-large":
            return _cnn((16, 32, 64, 128, 128), input_shape, n_classes)
    raise ValueError(f"--arch: {arch!r} is not known; choose one of {', '.join(ARCHS)}")


def reference_path(name: str) -> Path:
    return cache_dir() / f"{name}.pt"


def _check_name(name: str) -> dict:
    if name not in REFERENCE_MODELS:
        raise ValueError(f"--model: {name!r} is not a reference model; choose one of "
                         f"{', '.join(REFERENCE_MODELS)} or give a file saved with torch.save(model)")
    return REFERENCE_MODELS[name]


def reference_info(name: str) -> dict:
    """Recipe and measured accuracies of a cached reference model (trains it if needed)."""
    get_reference_model(name)
    blob = torch.load(reference_path(name), weights_only=True, map_location="cpu")
    return dict(blob["meta"])


def get_reference_model(name: str, *, retrain: bool = False, progress: bool | None = None) -> nn.Module:
    """Return a trained reference model (eval mode, CPU), training and caching it on first use.

    Parameters
    ----------
    name : one of :data:`REFERENCE_MODELS` (``mnist-mlp-500-300``, ``mnist-mlp-256-128``,
        ``mnist-cnn-small``).
    retrain : ignore the cache and train again.
    progress : show a progress bar (default: when stderr is a terminal).

    Returns
    -------
    torch.nn.Module

    Notes
    -----
    Training runs on the CPU in a few minutes; the file ``<cache>/<name>.pt`` holds the state dict
    and the recipe, seed and measured test accuracy. It is never written inside the repository.
    """
    recipe = _check_name(name)
    path = reference_path(name)
    from memcim.data.datasets import load_dataset

    if path.is_file() and not retrain:
        try:
            blob = torch.load(path, weights_only=True, map_location="cpu")
            meta = blob["meta"]
            model = build_model(recipe["arch"], meta["input_shape"], meta["n_classes"])
            model.load_state_dict(blob["state_dict"])
            return model.eval()
        except Exception as e:  # corrupt or stale cache: retrain
            print(f"memcim: cached {path} unusable ({type(e).__name__}); retraining", file=sys.stderr)
    from memcim.nn.train import evaluate_accuracy, train

    train_ds = load_dataset(recipe["dataset"], "train")
    val_ds = load_dataset(recipe["dataset"], "val")
    test_ds = load_dataset(recipe["dataset"], "test")
    model = build_model(recipe["arch"], train_ds.input_shape, train_ds.n_classes, seed=recipe["seed"])
    print(f"memcim: training reference model {name} (first use; cached in {path})", file=sys.stderr)
    hist = train(model, train_ds, val_ds=val_ds, epochs=recipe["epochs"], lr=recipe["lr"],
                 batch_size=recipe["batch_size"], weight_decay=recipe["weight_decay"],
                 seed=recipe["seed"], progress=progress)
    model.eval()
    meta = dict(recipe, name=name, input_shape=list(train_ds.input_shape), n_classes=train_ds.n_classes,
                test_accuracy=evaluate_accuracy(model, test_ds),
                val_accuracy=hist["val_accuracy"][-1], train_seconds=hist["seconds"],
                torch_version=str(torch.__version__))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)
    print(f"memcim: {name}: test accuracy {meta['test_accuracy']:.4f}", file=sys.stderr)
    return model
