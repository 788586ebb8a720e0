"""The shared vocabulary of every ``memcim`` command: one flag, one meaning, everywhere.

=====================  ===========================================================================
flag                   meaning
=====================  ===========================================================================
``--hw PRESET|FILE``   the hardware: a preset name (``memcim hw list``) or a ``.toml``/``.json`` file
``--set KEY=VALUE``    a dotted override of that hardware, repeatable (``--set adc.bits=6``)
``--chips N``          number of programmed chips (Monte Carlo samples over chips)
``--seed S``           seed of everything random in the command
``--data SPEC``        ``DATASET[:SPLIT][:N]`` (``mnist:test:1000``) or ``X.npy,Y.npy``
``--normalize M,S``    inputs become ``(x - M) / S`` before they reach the model
``--inputs FILE``      input vectors of a matrix command, ``(batch, rows)`` ``.npy``/``.npz``/``.csv``
``--model NAME|FILE``  a reference model name or a ``torch.save(model)`` file
``--import MODULE``    import a module that defines the model's classes (with ``--trust-model-file``)
``--input-shape C,H,W``the shape one sample is reshaped to before the model
``--out DIR``          always a directory: the command writes ``<name>.json`` (and ``<name>.png``)
``--json``             print the same JSON document to stdout
``--threads N``        torch threads of this process (sweep workers default to 1)
``--max-memory SIZE``  memory limit of the work (``8G``, ``500M``); default ``MEMCIM_MAX_MEMORY``
=====================  ===========================================================================

The library names parameters (``chips``, ``data``, ``device.g_max``); :data:`FLAGS` is the one
table that maps them to these flags, and :func:`memcim.cli.main` applies it to every error line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from memcim import validate

#: library parameter -> CLI flag (or flags, the first a command has), for error messages (a
#: parameter spelled like its flag, ``batch_size`` -> ``--batch-size``, needs no entry).
FLAGS: dict[str, str | tuple[str, ...]] = {
    "hw": "--hw", "preset": "--hw", "config": "--hw", "hardware": "--hw",
    "set": "--set", "settings": "--set",
    "chips": "--chips", "trials": "--chips", "n_chips": "--chips",
    "seed": "--seed",
    "data": "--data", "dataset": "--data", "split": "--data", "limit": "--data", "n_images": "--data",
    "n_test": "--data", "n_inputs": "--data",
    "normalize": "--normalize", "input_shape": "--input-shape",
    "inputs": "--inputs", "matrix": "--matrix", "model": "--model", "import_modules": "--import",
    "trust_model_file": "--trust-model-file", "out": "--out", "checkpoint_dir": "--out", "threads": "--threads",
    "max_memory": "--max-memory",
    "x": ("--data", "--inputs"), "reps": "--reps", "cov": "--cov",
}

DEFAULT_DATA = "mnist:test:1000"


def flag_for(param: str, options: set[str]) -> str | None:
    """The flag of library parameter ``param`` among a command's ``options``, or None."""
    if param in options:
        return param
    own = "--" + param.replace("_", "-")
    cands = FLAGS.get(param) or own
    for cand in (*((cands,) if isinstance(cands, str) else cands), own):   # the first the command has
        if cand in options:
            return cand
    if "." in param and "--set" in options:  # a hardware key: device.g_max
        return f"--set {param}"
    return None


def translate_error(message: str, options: set[str]) -> str:
    """``"chips: 0 is not allowed"`` -> ``"--chips: 0 is not allowed"`` when the command has ``--chips``."""
    head, sep, rest = message.partition(": ")
    if not sep or " " in head.strip() or head.startswith("-"):
        return message
    flag = flag_for(head.strip(), options)
    return f"{flag}: {rest}" if flag else message


# ------------------------------------------------------------------ hardware
def add_hw(p: argparse.ArgumentParser, *, default: str | None = "generic", repeat: bool = False,
           extra: str = "") -> None:
    """``--hw PRESET|FILE`` (repeatable when ``repeat``) and ``--set KEY=VALUE``."""
    what = "repeatable: one result per config; " if repeat else ""
    p.add_argument("--hw", action="append" if repeat else "store", default=[] if repeat else None,
                   metavar="PRESET|FILE",
                   help=f"hardware: a preset name (memcim hw list) or a .toml/.json file ({what}default "
                        f"{default or 'none'}){extra}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="dotted hardware override, repeatable: --set adc.bits=6 --set device.prog_sigma_rel=0.05 "
                        "(memcim hw show lists the keys)")


def parse_settings(items) -> dict[str, Any]:
    """``["adc.bits=6", "dac.enabled=false"]`` -> ``{"adc.bits": 6, "dac.enabled": False}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise ValueError(f"set: {item!r} is not allowed; use KEY=VALUE with a dotted key, e.g. adc.bits=6")
        if raw.lower() in ("none", "null"):
            value: Any = None
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        out[key] = value
    return out


def _one_hw(spec, settings: dict, default: str | None):
    from memcim.config import resolve_config

    try:
        hw = resolve_config(spec, default=default or "generic")
    except ValueError as e:
        msg = str(e)
        for prefix in ("preset: ", "config: "):  # the loader's own name for what --hw names
            msg = msg.removeprefix(prefix)
        raise ValueError(f"hw: {msg}") from None
    if settings:
        try:
            hw = hw.set(settings)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("set: ") else f"set: {msg}") from None
    return hw


def hardware(args, *, default: str | None = "generic", extra_settings: dict | None = None):
    """The one :class:`~memcim.config.HardwareConfig` of ``--hw`` and ``--set``."""
    settings = {**parse_settings(getattr(args, "settings", [])), **(extra_settings or {})}
    return _one_hw(getattr(args, "hw", None), settings, default)


def hardware_list(args, *, default: str = "generic", extra_settings: dict | None = None) -> list:
    """Every config of a repeatable ``--hw``, each with the ``--set`` overrides."""
    settings = {**parse_settings(getattr(args, "settings", [])), **(extra_settings or {})}
    specs = list(getattr(args, "hw", None) or []) or [default]
    return [_one_hw(s, settings, default) for s in specs]


# ------------------------------------------------------------------ chips, seed, threads
def add_chips(p, default: int, what: str = "programmed chips (Monte Carlo over chips)") -> None:
    p.add_argument("--chips", type=int, default=default, metavar="N", help=f"{what} (default {default})")


def add_seed(p, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, metavar="S",
                   help=f"seed of everything random in the command (default {default})")


def check_common(args) -> None:
    """Validate the shared numeric options a command has, before any work starts."""
    if getattr(args, "chips", None) is not None:
        validate.integer("chips", args.chips, lo=1, hi=100_000)
    if getattr(args, "seed", None) is not None:
        validate.seed(args.seed)
    if getattr(args, "out", None) is not None and getattr(args, "_out_is_dir", False):
        validate.out_dir("out", args.out)


# ------------------------------------------------------------------ data
def add_data(p, *, default: str | None = DEFAULT_DATA, inputs: bool = False, calib: bool = True) -> None:
    """``--data``, ``--normalize`` and ``--data-dir`` (and ``--inputs FILE`` when ``inputs``)."""
    p.add_argument("--data", default=default, metavar="SPEC",
                   help=f"DATASET[:SPLIT][:N] (mnist, fashion-mnist, digits, cifar10; e.g. mnist:test:1000) or "
                        f"X.npy,Y.npy with your own inputs and labels (default {default})")
    p.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="feed (x - MEAN) / STD to the model, as it was trained (e.g. 0.1307,0.3081 for MNIST)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="directory of the dataset files")
    if calib:
        p.add_argument("--calib-samples", type=int, default=256, metavar="N",
                       help="training samples that calibrate the ADC full scales (default 256)")
    if inputs:
        add_inputs(p)


def add_inputs(p, help_text: str = "input vectors (batch, rows): .npy, .npz or .csv") -> None:
    p.add_argument("--inputs", default=None, metavar="FILE", help=help_text)


def data(args, *, limit: int | None = None):
    """The :class:`~memcim.data.base.Dataset` of ``--data``/``--normalize``; prints the input range."""
    import sys

    from memcim.data.spec import load_data

    ds = load_data(args.data, normalize=getattr(args, "normalize", None), limit=limit,
                   root=getattr(args, "data_dir", None))
    lo, hi = float(ds.x.min()), float(ds.x.max())
    print(f"data: {ds.name}/{ds.split}, {len(ds)} samples of shape {tuple(ds.x.shape[1:])}, "
          f"input range [{lo:.4g}, {hi:.4g}]", file=sys.stderr)
    return ds


def calibration(args):
    """Calibration inputs for ``--data`` (the training split, or the first inputs of a user's file)."""
    from memcim.data.spec import calibration_data

    n = validate.integer("calib_samples", getattr(args, "calib_samples", 256), lo=1, hi=1_000_000)
    return calibration_data(args.data, n, normalize=getattr(args, "normalize", None),
                            root=getattr(args, "data_dir", None))


# ------------------------------------------------------------------ model
def add_model(p, *, required: bool = True, default: str | None = None, flag: str = "--model",
              help_text: str = "reference model (mnist-mlp-500-300, mnist-mlp-256-128, mnist-cnn-small) or a "
                               "torch.save(model) file") -> None:
    """``--model`` (or ``flag``), ``--import``, ``--trust-model-file`` and ``--input-shape``."""
    p.add_argument(flag, required=required, default=default, metavar="NAME|FILE", help=help_text)
    p.add_argument("--import", action="append", default=[], dest="import_modules", metavar="MODULE",
                   help=f"import MODULE (a .py file or a dotted module name) first, so the {flag} file's own "
                        "classes load; needs --trust-model-file (repeatable)")
    p.add_argument("--trust-model-file", action="store_true",
                   help=f"allow full unpickling of {flag} (runs code from the file)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="reshape each sample to this shape before the model (default: the data's shape; "
                        "an MLP whose first layer is Linear gets flattened inputs)")


def check_finite_model(m, spec, name: str = "model"):
    """Refuse a model with a NaN or infinite parameter or buffer, naming the first such tensor.

    ``name`` is the parameter the CLI maps to the flag (``model`` -> ``--model``, ``init`` -> ``--init``).
    """
    import torch

    for kind, items in (("parameter", m.named_parameters()), ("buffer", m.named_buffers())):
        for pname, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                bad = int((~torch.isfinite(t.detach())).sum())
                raise ValueError(f"{name}: {spec}: {kind} {pname} holds {bad} NaN or infinite value(s) of "
                                 f"{t.numel()}; every weight must be finite")
    return m


def model(args, sample_shape=None):
    """The model of ``--model``/``--import``/``--trust-model-file``, fitted to ``sample_shape``;
    a model with a NaN or infinite weight is refused (naming ``--model``)."""
    from memcim.nn.loading import fit_input, load_model

    m = load_model(args.model, trust_model_file=args.trust_model_file,
                   import_modules=tuple(getattr(args, "import_modules", ()) or ()))
    check_finite_model(m, args.model)
    if sample_shape is not None:
        m = fit_input(m, tuple(sample_shape), input_shape=getattr(args, "input_shape", None))
    return m


# ------------------------------------------------------------------ output
def add_out(p, *, what: str = "the result") -> None:
    """``--out DIR`` (always a directory) and ``--json``."""
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"directory to write {what} into as <name>.json (and <name>.png)")
    p.add_argument("--json", action="store_true", help="print the same JSON document to stdout")
    p.set_defaults(_out_is_dir=True)


def emit(args, name: str, result: Any, *, plot: Callable[[Any, Path], Any] | None = None,
         text: Callable[[Any], str] | None = None) -> int:
    """Write ``<out>/<name>.json`` (+ ``<name>.png`` through ``plot``), then print JSON or ``text``."""
    from memcim.io import dumps, write_json

    out = getattr(args, "out", None)
    written = []
    if out:
        written.append(write_json(Path(out) / f"{name}.json", result))
        if plot is not None:
            png = Path(out) / f"{name}.png"
            plot(result, png)
            written.append(png)
    if getattr(args, "json", False):
        print(dumps(result))
    else:
        if text is not None:
            print(text(result))
        if written:
            print("wrote " + ", ".join(str(w) for w in written))
    return 0


# ------------------------------------------------------------------ memory
def check_chips_memory(mapped, chips: int, batch: int, *, batch_name: str = "batch", copies: int = 1) -> None:
    """Refuse, before programming, ``chips`` chips of the plan ``mapped`` read with ``batch`` vectors
    when their estimated memory exceeds :func:`memcim.validate.memory_limit`.

    Per chip: every array in full (rows x cols, float64, a temporary of the same size while
    programming) and the tiles' outputs for the batch (three float64 copies). ``copies``: chips
    alive at once (1: they are programmed one after the other). Names ``--chips`` or
    ``batch_name``, whichever term is larger.
    """
    hw = mapped.hw
    arrays = mapped.n_row_tiles * mapped.n_col_tiles
    per_devices = 8 * 2 * arrays * hw.array.rows * hw.array.cols
    per_reads = 8 * 3 * batch * mapped.n_row_tiles * mapped.n_col_tiles * mapped.tile_cols
    total = copies * chips * (per_devices + per_reads)
    validate.memory("chips" if per_devices >= per_reads else batch_name, total,
                    f"{chips} chip(s) of {arrays} array(s) read with {batch} input vector(s)")


def first_non_finite(obj, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number in a JSON-like result, or None."""
    import math

    import numpy as np

    if isinstance(obj, bool) or obj is None:
        return None
    if isinstance(obj, (int, float, np.integer, np.floating)):
        return None if math.isfinite(float(obj)) else f"{path} = {float(obj)}"
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fc":
        return None if bool(np.isfinite(obj).all()) else f"{path} (an array)"
    if hasattr(obj, "detach") and hasattr(obj, "is_floating_point"):
        return first_non_finite(obj.detach().cpu().numpy(), path)
    if isinstance(obj, dict):
        for k, v in obj.items():
            hit = first_non_finite(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            hit = first_non_finite(v, f"{path}.{i}")
            if hit:
                return hit
    return None


def check_finite_result(name: str, result, what: str) -> None:
    """Refuse to print or store a result holding NaN or inf: one line naming ``name`` (the input
    that is to blame) and the first non-finite number."""
    hit = first_non_finite(result)
    if hit:
        raise ValueError(f"{name}: {what} is not finite ({hit}); check the model and inputs for NaN, inf "
                         "or values too large for the hardware")
