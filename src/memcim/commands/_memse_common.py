"""Shared argument handling of the MemSE commands (``mse``, ``optimize-gmax``)."""
from __future__ import annotations

import math


def add_model_args(p, *, sigma_required: bool = True) -> None:
    p.add_argument("--model", required=True,
                   help="reference model name (mnist-cnn-small, mnist-mlp-256-128, ...) or a torch.save(model) file")
    p.add_argument("--inputs", required=True,
                   help="inputs .npy/.npz/.csv of shape (B, ...) matching the model, or DATASET:N "
                        "(e.g. mnist:64, digits:32) for the first N test samples")
    p.add_argument("--sigma", type=float, required=sigma_required, default=None,
                   help="programming-noise std per device, S")
    p.add_argument("--levels", type=int, default=None, help="N: conductance steps, N+1 levels (default 128)")
    p.add_argument("--cov", default="lowrank", help="covariance mode: lowrank (default), exact or diagonal")
    p.add_argument("--r", type=float, default=1.0, help="TIA feedback resistance, Ω (default 1)")
    p.add_argument("--trust-model-file", action="store_true",
                   help="allow full unpickling of --model (runs code from the file)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--out", default=None, metavar="DIR", help="write the JSON result there")


def load(args):
    """(model, x, labels or None) from --model / --inputs, validated."""
    from memcim.nn.loading import load_model

    if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise ValueError(f"--sigma: {args.sigma} is not allowed; must be finite and >= 0 S")
    if args.levels is not None and args.levels < 1:
        raise ValueError(f"--levels: {args.levels} is not allowed; must be an integer >= 1")
    model = load_model(args.model, trust_model_file=args.trust_model_file).double().eval()
    x, labels = load_inputs(args.inputs, "--inputs", "test")
    check_fits(model, x)
    return model, x, labels


def load_inputs(spec, flag: str, split: str = "test"):
    """(x, labels or None) from a ``.npy/.npz/.csv`` file or ``DATASET:N`` (the first N samples of ``split``)."""
    import torch

    from memcim.io import load_array

    spec = str(spec)
    name, sep, cnt = spec.partition(":")
    labels = None
    if sep and cnt.isdigit() and not spec.endswith((".npy", ".npz", ".csv")):
        from memcim.data.datasets import load_dataset

        if int(cnt) < 1:
            raise ValueError(f"{flag}: {spec!r} asks for {cnt} samples; need >= 1")
        ds = load_dataset(name, split, limit=int(cnt))
        return ds.x.double(), ds.y
    return torch.as_tensor(load_array(spec, flag)), labels


def check_fits(model, x, flag: str = "--inputs") -> None:
    """One-line error when ``x`` does not fit ``model`` (or has a layer the analysis does not support)."""
    import torch

    from memcim.analysis.moments import parse_model

    parse_model(model)  # unsupported layers -> one-line ValueError naming the layer
    try:
        with torch.no_grad():
            model(x[:1])
    except RuntimeError as e:
        raise ValueError(f"{flag}: shape {tuple(x.shape)} does not fit the model ({str(e).splitlines()[0][:160]})") from None


def parse_floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
    if not vals:
        raise ValueError(f"{name}: empty list")
    return vals
