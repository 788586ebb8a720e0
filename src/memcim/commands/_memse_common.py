"""Shared argument handling of the MemSE commands (``mse``, ``optimize-gmax``)."""
from __future__ import annotations

import math


def add_model_args(p) -> None:
    p.add_argument("--model", required=True,
                   help="reference model name (mnist-cnn-small, mnist-mlp-256-128, ...) or a torch.save(model) file")
    p.add_argument("--inputs", required=True,
                   help="inputs .npy/.npz/.csv of shape (B, ...) matching the model, or DATASET:N "
                        "(e.g. mnist:64, digits:32) for the first N test samples")
    p.add_argument("--sigma", type=float, required=True, help="programming-noise std per device, S")
    p.add_argument("--levels", type=int, default=128, help="N: conductance steps, N+1 levels (default 128)")
    p.add_argument("--cov", default="lowrank", help="covariance mode: lowrank (default), exact or diagonal")
    p.add_argument("--r", type=float, default=1.0, help="TIA feedback resistance, Ω (default 1)")
    p.add_argument("--trust-model-file", action="store_true",
                   help="allow full unpickling of --model (runs code from the file)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--out", default=None, metavar="DIR", help="write the JSON result there")


def load(args):
    """(model, x, labels or None) from --model / --inputs, validated."""
    import torch

    from memcim.io import load_array
    from memcim.nn.loading import load_model

    if not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise ValueError(f"--sigma: {args.sigma} is not allowed; must be finite and >= 0 S")
    if args.levels < 1:
        raise ValueError(f"--levels: {args.levels} is not allowed; must be an integer >= 1")
    model = load_model(args.model, trust_model_file=args.trust_model_file).double().eval()
    from memcim.analysis.moments import parse_model

    parse_model(model)  # unsupported layers -> one-line ValueError naming the layer
    spec = str(args.inputs)
    name, sep, cnt = spec.partition(":")
    labels = None
    if sep and cnt.isdigit() and not spec.endswith((".npy", ".npz", ".csv")):
        from memcim.data.datasets import load_dataset

        if int(cnt) < 1:
            raise ValueError(f"--inputs: {spec!r} asks for {cnt} samples; need >= 1")
        ds = load_dataset(name, "test", limit=int(cnt))
        x, labels = ds.x.double(), ds.y
    else:
        x = torch.as_tensor(load_array(spec, "--inputs"))
    try:
        with torch.no_grad():
            model(x[:1])
    except RuntimeError as e:
        raise ValueError(f"--inputs: shape {tuple(x.shape)} does not fit the model ({str(e).splitlines()[0][:160]})") from None
    return model, x, labels


def parse_floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
    if not vals:
        raise ValueError(f"{name}: empty list")
    return vals
