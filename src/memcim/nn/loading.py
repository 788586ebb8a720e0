"""Load a model given on the command line: a reference name or a ``torch.save(model)`` file.

Unpickling a file can run arbitrary code. A model file is therefore read with
``torch.load(weights_only=True)`` and only the module classes of ``torch.nn`` (and memcim's own
analog layers) allow-listed. A file that needs anything else is refused with a one-line error
unless ``trust_model_file=True`` (``--trust-model-file``), which loads it with full unpickling.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn


def standard_module_classes() -> list[type]:
    """Every ``nn.Module`` subclass exported by ``torch.nn`` (the allow-list for safe loading)."""
    out = []
    for name in dir(nn):
        obj = getattr(nn, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            out.append(obj)
    return out


def _safe_globals() -> list:
    allowed = standard_module_classes()
    try:  # memcim's analog layers are safe to rebuild too
        from memcim.nn import analog

        allowed += [c for c in vars(analog).values()
                    if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == analog.__name__]
    except ImportError:  # pragma: no cover
        pass
    return allowed


def load_model_file(path: str | os.PathLike, *, trust_model_file: bool = False,
                    name: str = "--model") -> nn.Module:
    """Load a whole model saved with ``torch.save(model, path)``.

    Parameters
    ----------
    path : the file.
    trust_model_file : allow full unpickling (runs code from the file) when the safe loader refuses it.
    name : parameter name used in error messages.

    Returns
    -------
    torch.nn.Module on the CPU, in eval mode.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name}: {str(path)!r} is neither a reference model name nor an existing file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if m is None:
            w = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
            msg = (w.group(1).strip()[:200] if w else "") or "not a file written by torch.save"
            raise ValueError(f"{name}: cannot read {p} as a torch model file ({msg})") from None
        if not trust_model_file:
            what = m.group(1)
            raise ValueError(f"{name}: {p} needs full unpickling (it references {what}), which can run "
                             f"code; pass --trust-model-file if you trust this file") from None
        try:
            obj = torch.load(p, weights_only=False, map_location="cpu")
        except Exception as e2:
            raise ValueError(f"{name}: cannot load {p} ({type(e2).__name__}: {e2})") from None
    except Exception as e:
        msg = " ".join(str(e).split())[:200]
        raise ValueError(f"{name}: cannot read {p} as a torch file ({type(e).__name__}: {msg})") from None
    if isinstance(obj, dict):
        raise ValueError(f"{name}: {p} holds a state dict, not a model; save the whole model with "
                         "torch.save(model, path) or use memcim train's model.pt")
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{name}: {p} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj.eval()


def load_model(spec: str | os.PathLike, *, trust_model_file: bool = False) -> nn.Module:
    """A reference model by name (see :data:`memcim.nn.models.REFERENCE_MODELS`) or a model file."""
    from memcim.nn.models import REFERENCE_MODELS, get_reference_model

    if str(spec) in REFERENCE_MODELS:
        return get_reference_model(str(spec))
    return load_model_file(spec, trust_model_file=trust_model_file)
