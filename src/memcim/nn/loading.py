"""Load any user's model: a reference name or a ``torch.save(model)`` file, fitted to the data.

Unpickling a file can run arbitrary code. A model file is therefore read with
``torch.load(weights_only=True)`` and only the module classes of ``torch.nn`` (and memcim's own
analog layers) allow-listed. A file that needs anything else is refused with a one-line error
unless ``trust_model_file=True`` (``--trust-model-file``), which loads it with full unpickling.

A model made of the user's own classes needs those classes importable: ``import_modules``
(``--import``) names dotted modules or ``.py`` files that are imported first (a file by its
location, under its file stem as module name). A class pickled from a training *script*
(``__main__.MyNet``) is also found in an imported file that defines ``MyNet``.

:func:`fit_input` makes a model accept the data's samples: an MLP whose first layer is
``nn.Linear`` gets flattened inputs, and ``input_shape`` reshapes each sample (``"C,H,W"``).

Examples
--------
>>> import torch
>>> from torch import nn
>>> mlp = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
>>> fitted = fit_input(mlp, (1, 28, 28))
>>> [type(m).__name__ for m in fitted]
['Flatten', 'Linear', 'ReLU', 'Linear']
>>> fitted(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
>>> parse_input_shape("1,28,28")
(1, 28, 28)
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import pickle
import re
import sys
import types
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
    from memcim.nn import models  # the architectures of build_model (resnet-small, lstm-row, vit-tiny)

    allowed += [c for c in vars(models).values()
                if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == models.__name__]
    # nn.MultiheadAttention's output projection (inside nn.TransformerEncoderLayer)
    allowed.append(nn.modules.linear.NonDynamicallyQuantizableLinear)
    return allowed


# ------------------------------------------------------------------ user modules
def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def import_user_modules(modules, name: str = "import_modules") -> list[types.ModuleType]:
    """Import each of ``modules``: a dotted module name, or a ``.py`` file imported by its location.

    A file ``path/to/mynet.py`` becomes module ``mynet`` (in ``sys.modules``), so a class pickled as
    ``mynet.MyNet`` resolves. Returns the modules, in order.
    """
    if isinstance(modules, (str, os.PathLike)):
        modules = [modules]
    out = []
    for spec in modules or ():
        spec = str(spec).strip()
        if not spec:
            raise ValueError(f"{name}: an empty module name is not allowed; give a dotted module or a .py file")
        if _is_path(spec):
            path = Path(spec).expanduser()
            if not path.is_file():
                raise ValueError(f"{name}: file not found: {spec} (give a .py file or a dotted module name)")
            modname = path.stem
            if not modname.isidentifier():
                raise ValueError(f"{name}: {spec} has a file name that is not a Python identifier; rename it")
            key = str(path.resolve())
            old = sys.modules.get(modname)
            if old is not None and getattr(old, "__memcim_import__", None) == key:
                out.append(old)
                continue
            spec_obj = importlib.util.spec_from_file_location(modname, path)
            if spec_obj is None or spec_obj.loader is None:  # pragma: no cover
                raise ValueError(f"{name}: cannot import {spec} as a Python module")
            module = importlib.util.module_from_spec(spec_obj)
            module.__memcim_import__ = key
            sys.modules[modname] = module
            try:
                spec_obj.loader.exec_module(module)
            except Exception as e:
                sys.modules.pop(modname, None)
                if old is not None:
                    sys.modules[modname] = old
                raise ValueError(f"{name}: importing {spec} failed ({type(e).__name__}: {e})") from None
            out.append(module)
        else:
            if not all(part.isidentifier() for part in spec.split(".")):
                raise ValueError(f"{name}: {spec!r} is neither a dotted module name nor a .py file")
            try:
                out.append(importlib.import_module(spec))
            except ImportError as e:
                raise ValueError(f"{name}: cannot import module {spec!r} ({e}); give an installed module "
                                 "or the path of its .py file") from None
            except Exception as e:
                raise ValueError(f"{name}: importing {spec!r} failed ({type(e).__name__}: {e})") from None
    return out


def _importable(qualified: str) -> bool:
    """True when the global ``module.Name`` of a pickle can be found."""
    mod, _, attr = qualified.rpartition(".")
    if not mod:
        return False
    m = sys.modules.get(mod)
    if m is None:
        try:
            m = importlib.import_module(mod)
        except Exception:
            return False
    obj = m
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


def _pickle_module(user_modules: list[types.ModuleType]):
    """A ``pickle``-like module whose Unpickler also finds ``__main__.X`` in the user's modules."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return super().find_class(module, name)
            except (AttributeError, ModuleNotFoundError):
                if module == "__main__":
                    for m in user_modules:
                        if hasattr(m, name):
                            return getattr(m, name)
                raise

    mod = types.ModuleType("memcim_user_pickle")
    mod.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    return mod


def _missing_class_hint(what: str) -> str:
    return (f"{what} is not importable; pass import_modules (--import MODULE or --import FILE.py) "
            f"with the module that defines it, together with trust_model_file (--trust-model-file)")


# ------------------------------------------------------------------ loading
def load_model_file(path: str | os.PathLike, *, trust_model_file: bool = False, import_modules=(),
                    name: str = "model") -> nn.Module:
    """Load a whole model saved with ``torch.save(model, path)``.

    Parameters
    ----------
    path : the file.
    trust_model_file : allow full unpickling (runs code from the file) when the safe loader refuses it.
    import_modules : dotted module names or ``.py`` files imported first, so the file's own classes load.
    name : parameter name used in error messages.

    Returns
    -------
    torch.nn.Module on the CPU, in eval mode.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name}: {str(path)!r} is neither a reference model name nor an existing file")
    user = import_user_modules(import_modules)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if m is None:
            w = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
            msg = (w.group(1).strip()[:200] if w else "") or "not a file written by torch.save"
            raise ValueError(f"{name}: cannot read {p} as a torch model file ({msg})") from None
        what = m.group(1)
        if not trust_model_file:
            if what.startswith("__main__.") and user:
                found = any(hasattr(u, what.split(".", 1)[1]) for u in user)
            else:
                found = _importable(what)
            if not found:
                raise ValueError(f"{name}: {p} needs full unpickling (it can run code) and its class "
                                 f"{_missing_class_hint(what)}, if you trust this file") from None
            raise ValueError(f"{name}: {p} needs full unpickling (it references {what}), which can run "
                             f"code; pass trust_model_file (--trust-model-file) if you trust this file") from None
        try:
            obj = torch.load(p, weights_only=False, map_location="cpu", pickle_module=_pickle_module(user))
        except (AttributeError, ModuleNotFoundError) as e2:
            cls = re.search(r"attribute '(\w+)' on <module '([\w.]+)'", str(e2))
            if cls:
                missing = f"class {cls.group(2)}.{cls.group(1)}"
            else:
                missing = f"module {getattr(e2, 'name', None) or str(e2)!r}"
            raise ValueError(f"{name}: cannot load {p}: {_missing_class_hint(missing)}") from None
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


def load_model(spec: str | os.PathLike, *, trust_model_file: bool = False, import_modules=(),
               name: str = "model") -> nn.Module:
    """A reference model by name (see :data:`memcim.nn.models.REFERENCE_MODELS`) or a model file.

    Parameters
    ----------
    spec : a reference model name or the path of a ``torch.save(model)`` file.
    trust_model_file : allow full unpickling of the file (runs code from it).
    import_modules : dotted module names or ``.py`` files that define the file's classes, imported first.
    name : parameter name used in error messages.
    """
    from memcim.nn.models import REFERENCE_MODELS, get_reference_model

    if str(spec) in REFERENCE_MODELS:
        import_user_modules(import_modules)
        return get_reference_model(str(spec))
    return load_model_file(spec, trust_model_file=trust_model_file, import_modules=import_modules, name=name)


# ------------------------------------------------------------------ input layout
def parse_input_shape(value, name: str = "input_shape") -> tuple[int, ...] | None:
    """``"1,28,28"`` or ``(1, 28, 28)`` -> ``(1, 28, 28)``; None stays None."""
    if value is None:
        return None
    parts = str(value).split(",") if isinstance(value, str) else list(value)
    try:
        shape = tuple(int(str(v).strip()) for v in parts)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not allowed; give positive integers like C,H,W "
                         "(e.g. 1,28,28) or 784") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"{name}: {value!r} is not allowed; give positive integers like C,H,W (e.g. 1,28,28)")
    return shape


def _try(model: nn.Module, sample_shape) -> Exception | None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *sample_shape, dtype=_dtype(model)))
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "does not accept"
        return e
    finally:
        model.train(was)


def _dtype(model: nn.Module) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _first_param_layer(model: nn.Module) -> nn.Module | None:
    for m in model.modules():
        if next(iter(m.parameters(recurse=False)), None) is not None:
            return m
    return None


def _prepend(model: nn.Module, *layers: nn.Module) -> nn.Module:
    if type(model) is nn.Sequential:
        return nn.Sequential(*layers, *model.children()).train(model.training)
    return nn.Sequential(*layers, model).train(model.training)


def fit_input(model: nn.Module, sample_shape, input_shape=None) -> nn.Module:
    """Make ``model`` accept samples of ``sample_shape`` (the data's shape without the batch axis).

    Parameters
    ----------
    model : the model.
    sample_shape : shape of one sample of the data, e.g. ``(1, 28, 28)``.
    input_shape : ``"C,H,W"`` or a tuple: reshape each sample to this shape before the model
        (``nn.Flatten`` + ``nn.Unflatten``); it must hold as many values as a sample.

    Returns
    -------
    The model itself when it accepts the samples; otherwise a new flat ``nn.Sequential`` that
    flattens (a first parametrised layer ``nn.Linear`` with ``in_features`` equal to the sample
    size) or reshapes (``input_shape``) the samples first. The model's layers are shared, not copied.
    """
    sample_shape = tuple(int(v) for v in sample_shape)
    n = math.prod(sample_shape)
    shape = parse_input_shape(input_shape)
    if shape is not None:
        if math.prod(shape) != n:
            raise ValueError(f"input_shape: {','.join(map(str, shape))} holds {math.prod(shape)} values but a "
                             f"sample of the data has shape {sample_shape} ({n} values); give a shape with "
                             f"{n} values")
        if shape != sample_shape:
            layers = [nn.Flatten()] + ([nn.Unflatten(1, shape)] if len(shape) > 1 else [])
            model = _prepend(model, *layers)
        err = _try(model, shape)
        if err is not None:
            raise ValueError(f"input_shape: the model does not accept samples of shape {shape} "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:160]})")
        return model
    err = _try(model, sample_shape)
    if err is None:
        return model
    first = _first_param_layer(model)
    if isinstance(first, nn.Linear) and first.in_features == n and len(sample_shape) > 1:
        fitted = _prepend(model, nn.Flatten())
        if _try(fitted, sample_shape) is None:
            return fitted
    hint = (f"its first layer {type(first).__name__}" + (f"({first.in_features}, ...)" if isinstance(first, nn.Linear)
                                                          else "")) if first is not None else "it"
    raise ValueError(f"input_shape: the model does not accept samples of shape {sample_shape} ({hint}: "
                     f"{type(err).__name__}: {' '.join(str(err).split())[:160]}); give input_shape "
                     "(--input-shape C,H,W) with the layout it expects")
