"""Reference models of the papers, and a cache of trained copies outside the repository.

Architectures (``build_model(arch, input_shape)``):

- ``mlp-500-300``: the 784-500-300-10 ReLU MLP of paper 002 (any ``mlp-H1-H2-...`` works);
- ``mlp-256-128``: the 784-256-128-10 ReLU MLP, the 3-layer MLP of paper 003;
- ``cnn-small`` / ``cnn-large``: the CNNs of paper 001: five pairs of 3x3 convolution (unit stride,
  padding 1) with Softplus and 2x2 average pooling, 2-4-8-16-16 (small) or 16-32-64-128-128 (large)
  filters, then one linear layer. Five halvings need a 32x32 input, so a smaller input (MNIST's
  28x28) is zero-padded to 32x32 by a leading ``ZeroPad2d`` layer (kept digital on conversion);
- ``resnet-small``: a ResNet-style CNN (:class:`ResNetSmall`): a 3x3 stem, two residual blocks
  (conv-BN-ReLU-conv-BN plus an identity or strided 1x1 shortcut), one depthwise-separable block
  (3x3 depthwise ``Conv2d(groups=channels)`` then a 1x1 pointwise convolution), global average
  pooling and a linear head;
- ``lstm-row``: an LSTM on sequential MNIST (:class:`LSTMRow`): each image row is one time step
  (28 steps of 28 pixels), ``nn.LSTM`` with 128 hidden units, a linear head on the last hidden state;
- ``vit-tiny``: a small vision transformer (:class:`ViTTiny`): 7x7 patches (16 on MNIST) embedded by a
  strided ``Conv2d``, a class token, learned positional embeddings, two pre-norm
  ``nn.TransformerEncoderLayer`` (d_model 64, 4 heads, feed-forward 128, no dropout), a linear head
  on the class token.

All three are ``torch.fx``-traceable (``torch.fx.symbolic_trace``) and take (N, C, H, W) images.

Reference models (``get_reference_model(name)``) ship with memcim: their trained weights are
package data (``memcim/nn/weights/<name>.pt``: the float32 state dict and its ``meta``, with the
recipe, seed, measured test accuracy and the exact ``memcim train`` command that made them).
Nothing trains at first use. ``retrain=True`` trains again with the recipe and caches the result
in ``$MEMCIM_CACHE/models`` (default ``~/.cache/memcim/models``); that cache also holds user
recipes added to :data:`REFERENCE_MODELS` that ship no weights.

Remaking a shipped file (``memcim train`` with one thread gives the same bits on one machine;
another machine or thread count rounds differently and lands within the seed-to-seed spread)::

    memcim train --arch mlp-256-128 --data mnist:train --epochs 20 --lr 0.001 --batch-size 128 \
        --seed 0 --threads 1 --out /tmp/r
    python -c "from memcim.nn.models import pack_reference as p; p('mnist-mlp-256-128', '/tmp/r')"
"""
from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

ARCHS = ("mlp-500-300", "mlp-256-128", "cnn-small", "cnn-large", "resnet-small", "lstm-row", "vit-tiny",
         "mlp-H1-H2-...")

def _recipe(arch: str, epochs: int, lr: float, paper: str) -> dict:
    """A reference model's training recipe: MNIST, batches of 128, no weight decay, seed 0."""
    return dict(arch=arch, dataset="mnist", epochs=epochs, lr=lr, batch_size=128, weight_decay=0.0, seed=0,
                paper=paper)


#: name -> training recipe. ``test_accuracy`` is filled in the cache file after training.
REFERENCE_MODELS = {
    "mnist-mlp-500-300": _recipe("mlp-500-300", 20, 1e-3, "002 (Representable Matrices)"),
    "mnist-mlp-256-128": _recipe("mlp-256-128", 20, 1e-3, "003 (Mathematical Optimization of Analog CiM)"),
    "mnist-cnn-small": _recipe("cnn-small", 20, 3e-3, "001 (MemSE), trained on MNIST while CIFAR-10 is absent"),
    # issue 15: residual, depthwise, recurrent and attention layers
    "mnist-resnet-small": _recipe("resnet-small", 5, 2e-3,
                                  "issue 15 (residual blocks and a depthwise-separable block)"),
    "mnist-lstm-row": _recipe("lstm-row", 10, 3e-3, "issue 15 (LSTM on sequential MNIST, one row per time step)"),
    "mnist-vit-tiny": _recipe("vit-tiny", 15, 1e-3, "issue 15 (vision transformer on 7x7 MNIST patches)"),
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


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or a 1x1 convolution + BN when the stride
    or the width changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise convolution (``groups=c_in``)-BN-ReLU, then 1x1 pointwise convolution-BN-ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.bn2(self.pointwise(self.relu1(self.bn1(self.depthwise(x))))))


class ResNetSmall(nn.Module):
    """ResNet-style CNN: stem conv3x3(16)-BN-ReLU, residual blocks 16 -> 16 and 16 -> 32 (stride 2),
    a depthwise-separable block 32 -> 64 (stride 2), global average pooling, ``Linear(64, n_classes)``."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1),
                                  nn.ReLU())
        self.block1 = ResidualBlock(w1, w1)
        self.block2 = ResidualBlock(w1, w2, stride=2)
        self.block3 = DepthwiseSeparable(w2, w3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w3, n_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class LSTMRow(nn.Module):
    """Sequential image classifier: the rows of a (N, C, H, W) image are H time steps of C*W values
    (MNIST: 28 steps of 28 pixels), read by a batch-first ``nn.LSTM``; a linear head classifies the
    last hidden state."""

    def __init__(self, input_shape=(1, 28, 28), n_classes: int = 10, hidden: int = 128, layers: int = 1):
        super().__init__()
        c, h, w = input_shape
        self.steps, self.features = h, c * w
        self.lstm = nn.LSTM(c * w, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        seq = x.permute(0, 2, 1, 3).reshape(x.shape[0], self.steps, self.features)   # (N, H, C*W)
        out, _ = self.lstm(seq)
        return self.fc(out[:, -1])


class ViTTiny(nn.Module):
    """Small vision transformer: ``Conv2d(C, dim, patch, stride=patch)`` patch embedding, a learned
    class token and positional embedding, ``depth`` pre-norm ``nn.TransformerEncoderLayer`` (batch
    first, GELU, no dropout), a final LayerNorm and a linear head on the class token."""

    def __init__(self, input_shape=(1, 28, 28), n_classes: int = 10, patch: int = 7, dim: int = 64,
                 depth: int = 2, heads: int = 4, mlp: int = 128):
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise ValueError(f"input_shape: {tuple(input_shape)} is not allowed for vit-tiny; height and width "
                             f"must be multiples of the patch size {patch}")
        n_patches = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.encoder = nn.Sequential(*[
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=mlp, dropout=0.0, activation=nn.GELU(),
                                       batch_first=True, norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)                     # (N, patches, dim)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = self.norm(self.encoder(t))
        return self.head(t[:, 0])


def build_model(arch: str, input_shape=(1, 28, 28), n_classes: int = 10, *, seed: int = 0) -> nn.Module:
    """Build an untrained model with a seeded initialisation (the global RNG is left untouched).

    Parameters
    ----------
    arch : ``mlp-500-300``, ``mlp-256-128``, any ``mlp-H1-H2-...``, ``cnn-small``, ``cnn-large``,
        ``resnet-small``, ``lstm-row`` or ``vit-tiny``.
    input_shape : (C, H, W) of one sample.
    n_classes : number of outputs.
    seed : seed of the weight initialisation.

    Returns
    -------
    torch.nn.Module (``nn.Sequential`` for the MLPs and the paper-001 CNNs)
    """
    input_shape = tuple(int(v) for v in input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = re.fullmatch(r"mlp((?:-\d+)+)", str(arch))
        if m:
            hidden = [int(v) for v in m.group(1).strip("-").split("-")]
            if min(hidden) < 1:
                raise ValueError(f"arch: {arch!r} has a zero-width layer; every width must be >= 1")
            return _mlp([math.prod(input_shape), *hidden, n_classes])
        if len(input_shape) != 3:
            raise ValueError(f"input_shape: {input_shape} is not allowed for {arch!r}; a CNN needs C,H,W")
        if arch == "cnn-small":
            return _cnn((2, 4, 8, 16, 16), input_shape, n_classes)
        if arch == "cnn-large":
            return _cnn((16, 32, 64, 128, 128), input_shape, n_classes)
        if arch == "resnet-small":
            return ResNetSmall(input_shape[0], n_classes)
        if arch == "lstm-row":
            return LSTMRow(input_shape, n_classes)
        if arch == "vit-tiny":
            return ViTTiny(input_shape, n_classes)
    raise ValueError(f"arch: {arch!r} is not known; choose one of {', '.join(ARCHS)}")


#: Directory of the shipped reference weights (package data).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _check_name(name: str) -> dict:
    if name not in REFERENCE_MODELS:
        raise ValueError(f"model: {name!r} is not a reference model; choose one of "
                         f"{', '.join(REFERENCE_MODELS)} or give a file saved with torch.save(model)")
    return REFERENCE_MODELS[name]


def train_command(name: str, out: str = "DIR") -> str:
    """The exact ``memcim train`` command that makes reference model ``name`` from its recipe."""
    r = _check_name(name)
    if r.get("weight_decay", 0.0):
        raise ValueError(f"model: {name!r} has weight_decay {r['weight_decay']}, which memcim train does not take")
    return (f"memcim train --arch {r['arch']} --data {r['dataset']}:train --epochs {r['epochs']} "
            f"--lr {r['lr']:g} --batch-size {r['batch_size']} --seed {r['seed']} --threads 1 --out {out}")


def shipped_path(name: str) -> Path:
    """Where the package ships the trained weights of ``name`` (the file may be absent for user recipes)."""
    return WEIGHTS_DIR / f"{name}.pt"


def cache_path(name: str) -> Path:
    """Where ``retrain=True`` (and a user recipe without shipped weights) caches a trained model."""
    return cache_dir() / f"{name}.pt"


def reference_path(name: str) -> Path:
    """The file that :func:`get_reference_model` reads: the shipped weights, else the cache."""
    p = shipped_path(name)
    return p if p.is_file() else cache_path(name)


def _read(path: Path, recipe: dict) -> tuple[nn.Module, dict]:
    blob = torch.load(path, weights_only=True, map_location="cpu")
    meta = blob["meta"]
    model = build_model(recipe["arch"], meta["input_shape"], meta["n_classes"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), dict(meta)


def reference_info(name: str) -> dict:
    """Recipe, seed, measured accuracies and making command of a reference model (its file's ``meta``)."""
    recipe = _check_name(name)
    if not reference_path(name).is_file():
        get_reference_model(name)
    return _read(reference_path(name), recipe)[1]


def train_reference(name: str, *, progress: bool | None = None) -> tuple[nn.Module, dict]:
    """Train reference model ``name`` from its recipe (what ``memcim train`` does with
    :func:`train_command`'s flags) and measure it; returns ``(model, meta)``. Nothing is written."""
    from memcim.data.datasets import load_dataset
    from memcim.nn.train import evaluate_accuracy, train

    recipe = _check_name(name)
    train_ds = load_dataset(recipe["dataset"], "train")
    val_ds = load_dataset(recipe["dataset"], "val")
    test_ds = load_dataset(recipe["dataset"], "test")
    model = build_model(recipe["arch"], train_ds.input_shape, train_ds.n_classes, seed=recipe["seed"])
    hist = train(model, train_ds, val_ds=val_ds, epochs=recipe["epochs"], lr=recipe["lr"],
                 batch_size=recipe["batch_size"], weight_decay=recipe["weight_decay"],
                 seed=recipe["seed"], progress=progress, threads=1)   # as the recorded command: --threads 1
    model.eval()
    meta = dict(recipe, name=name, input_shape=list(train_ds.input_shape), n_classes=train_ds.n_classes,
                test_accuracy=evaluate_accuracy(model, test_ds), val_accuracy=hist["val_accuracy"][-1],
                train_seconds=hist["seconds"], torch_version=str(torch.__version__))
    return model, meta


def _save(path: Path, model: nn.Module, meta: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    sd = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}    # integer buffers (BatchNorm's num_batches_tracked) stay
    torch.save({"state_dict": sd, "meta": meta}, tmp)
    os.replace(tmp, path)
    return path


def get_reference_model(name: str, *, retrain: bool = False, progress: bool | None = None) -> nn.Module:
    """Return a trained reference model (eval mode, CPU, float32).

    Parameters
    ----------
    name : one of :data:`REFERENCE_MODELS` (``mnist-mlp-500-300``, ``mnist-mlp-256-128``,
        ``mnist-cnn-small``, ``mnist-resnet-small``, ``mnist-lstm-row``, ``mnist-vit-tiny``).
    retrain : train again from the recipe (minutes on the CPU) and cache the result in
        :func:`cache_path`; the shipped weights are left as they are.
    progress : show a progress bar while training (default: when stderr is a terminal).

    Returns
    -------
    torch.nn.Module

    Notes
    -----
    The shipped file ``memcim/nn/weights/<name>.pt`` is loaded bit-exactly; nothing trains. Only a
    recipe added by the user (no shipped file) is trained on first use and cached.
    """
    recipe = _check_name(name)
    shipped = shipped_path(name)
    if not retrain and shipped.is_file():
        try:
            return _read(shipped, recipe)[0]
        except Exception as e:  # noqa: BLE001 - a damaged install
            raise ValueError(f"model: shipped weights {shipped} are unreadable ({type(e).__name__}: {e}); "
                             "reinstall memcim") from None
    path = cache_path(name)
    if path.is_file() and not retrain:
        try:
            return _read(path, recipe)[0]
        except Exception as e:  # noqa: BLE001 - corrupt or stale cache: retrain
            print(f"memcim: cached {path} unusable ({type(e).__name__}); retraining", file=sys.stderr)
    print(f"memcim: training reference model {name} from its recipe (cached in {path})", file=sys.stderr)
    model, meta = train_reference(name, progress=progress)
    _save(path, model, meta)
    print(f"memcim: {name}: test accuracy {meta['test_accuracy']:.4f}", file=sys.stderr)
    return model


def pack_reference(name: str, run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the shipped weights of ``name`` from a ``memcim train --out RUN_DIR`` run of its
    :func:`train_command`: the state dict of ``RUN_DIR/model.pt`` and a ``meta`` with the recipe,
    seed, the test accuracy measured here on the full test split, and the command."""
    import json

    from memcim.data.datasets import load_dataset
    from memcim.nn.loading import load_model_file
    from memcim.nn.train import evaluate_accuracy

    recipe = _check_name(name)
    run = Path(run_dir)
    model = load_model_file(run / "model.pt", name="run_dir")
    doc = json.loads((run / "train.json").read_text())
    test_ds = load_dataset(recipe["dataset"], "test")
    ref = build_model(recipe["arch"], test_ds.input_shape, test_ds.n_classes)
    ref.load_state_dict(model.state_dict())
    hist = doc.get("history", {})
    meta = dict(recipe, name=name, input_shape=list(test_ds.input_shape), n_classes=test_ds.n_classes,
                test_accuracy=evaluate_accuracy(ref.eval(), test_ds),
                val_accuracy=(hist.get("val_accuracy") or [None])[-1], train_seconds=hist.get("seconds"),
                command=train_command(name), torch_version=str(torch.__version__))
    return _save(Path(out) if out is not None else shipped_path(name), ref, meta)
