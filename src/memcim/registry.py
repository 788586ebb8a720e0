"""One registry of what memcim can run, keyed like ``"002/fig9a"`` (a paper's figure) or
``"evaluate"`` (a library entry point behind a command).

``memcim paper``, ``memcim sweep`` and ``memcim paper reproduce`` all look entries up here and
call them directly: no command line is parsed and no printed output is read back.

An entry's ``run`` takes keyword parameters and returns a JSON-ready result (a dict); it never
prints and never writes files. ``plot(result, path)`` draws its PNG. :func:`run` is the one place
that saves both.

Examples
--------
>>> from memcim import registry
>>> "002/fig9a" in registry.keys()
True
>>> registry.get("nope/fig1")
Traceback (most recent call last):
...
ValueError: key: 'nope/fig1' is not registered; see memcim paper list
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Modules whose import registers the built-in entries.
BUILTIN_MODULES = (
    "memcim.experiments.lowrank_fig2",
    "memcim.experiments.lowrank_hw",
    "memcim.experiments.lowrank_mlp",
    "memcim.experiments.memse_figs",
    "memcim.experiments.irdrop_figs",
    "memcim.experiments.convex_cim",
    "memcim.experiments.tasks",
    "memcim.experiments.drift",
    "memcim.experiments.layers_eval",
    "memcim.experiments.energy_front",
)


@dataclass(frozen=True)
class Entry:
    """One runnable thing.

    Attributes
    ----------
    key : ``"<paper>/<figure>"`` for a paper's figure, or a plain name for a library task.
    run : ``run(**params) -> dict``; pure (no printing, no files).
    title : one line saying what it makes.
    plot : ``plot(result, png_path)`` or None.
    quick : parameters of the ``--quick`` variant (minutes on 2 cores).
    paper : the paper key (``"002"``) or None.
    summary : ``summary(result) -> dict`` of headline numbers, or None (then ``result["summary"]``).
    reference : the paper's own values of those headline numbers, keyed like ``summary``.
    hardware : the preset an entry that takes a ``hw`` parameter uses by default (``"irdrop"``), so
        ``--set`` alone can override it; None for an entry that takes no hardware.
    """

    key: str
    run: Callable[..., Any]
    title: str
    plot: Callable[[Any, Path], Any] | None = None
    quick: Mapping[str, Any] = field(default_factory=dict)
    paper: str | None = None
    summary: Callable[[Any], dict] | None = None
    reference: Mapping[str, str] = field(default_factory=dict)
    hardware: str | None = None

    @property
    def name(self) -> str:
        """File stem of the saved result: the key with ``/`` replaced (``002_fig9a``)."""
        return self.key.replace("/", "_")

    def parameters(self) -> dict[str, Any]:
        """Keyword parameters of ``run`` and their defaults."""
        sig = inspect.signature(self.run)
        return {k: (None if p.default is inspect.Parameter.empty else p.default)
                for k, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def headline(self, result: Any) -> dict:
        if self.summary is not None:
            return dict(self.summary(result))
        s = result.get("summary") if isinstance(result, dict) else None
        return dict(s) if isinstance(s, dict) else {}


REGISTRY: dict[str, Entry] = {}
_loaded = False


def register(key: str, *, title: str, plot=None, quick: Mapping[str, Any] | None = None,
             summary=None, reference: Mapping[str, str] | None = None, hardware: str | None = None):
    """Decorator: register ``fn`` under ``key`` (a key with ``/`` belongs to the paper before it).

    ``quick`` must name parameters of ``fn``: a typo there would silently run the full settings.
    """
    def deco(fn):
        paper = key.split("/", 1)[0] if "/" in key else None
        entry = Entry(key, fn, title, plot, dict(quick or {}), paper, summary, dict(reference or {}), hardware)
        check_params(entry, entry.quick)
        REGISTRY[key] = entry
        return fn
    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in BUILTIN_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:  # a module not yet written must not hide the others
                if e.name != mod:
                    raise


def keys(paper: str | None = None) -> list[str]:
    """Registered keys (of one paper when ``paper`` is given), sorted."""
    import re

    _load()
    natural = lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)]
    return sorted((k for k, e in REGISTRY.items() if paper is None or e.paper == paper), key=natural)


def papers() -> list[str]:
    _load()
    return sorted({e.paper for e in REGISTRY.values() if e.paper})


def get(key: str) -> Entry:
    """The entry of ``key``; a one-line error naming the parameter otherwise."""
    _load()
    if key not in REGISTRY:
        raise ValueError(f"key: {key!r} is not registered; see memcim paper list")
    return REGISTRY[key]


def check_params(entry: Entry, params: Mapping[str, Any]) -> None:
    allowed = entry.parameters()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(entry.run).parameters.values())
    unknown = [k for k in params if k not in allowed]
    if unknown and not takes_any:
        raise ValueError(f"params: {unknown[0]!r} is not a parameter of {entry.key}; allowed: "
                         f"{', '.join(allowed) or 'none'}")


def params_for(entry: Entry, *, quick: bool = False, **params) -> dict[str, Any]:
    """The keyword parameters a run of ``entry`` gets: its ``quick`` ones (when ``quick``), then ``params``."""
    kw = {**(entry.quick if quick else {}), **params}
    check_params(entry, kw)
    return kw


def record(entry: Entry, result: Any, *, quick: bool, params: Mapping[str, Any], complete: bool = True) -> Any:
    """Stamp a result dict with how it was made: ``result["run"]`` (key, quick, the parameters it was
    given, complete) and ``result["provenance"]`` (version, commit, time, seed) when it has none."""
    from memcim.io import provenance

    if isinstance(result, dict):
        shown = {k: _shown(v) for k, v in params.items() if not callable(v)}
        result["run"] = {"key": entry.key, "quick": bool(quick), "params": shown, "complete": complete}
        result.setdefault("provenance", provenance(seed=params.get("seed")))
    return result


def _shown(value: Any) -> Any:
    """A parameter as JSON can hold it: itself, or its type's name (a model object)."""
    import json

    from memcim.io import to_jsonable

    try:
        v = to_jsonable(value)
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return f"<{type(value).__name__}>"


def run(key: str, *, quick: bool = False, out: str | Path | None = None, **params) -> Any:
    """Run ``key`` with its ``--quick`` parameters (when ``quick``) updated by ``params``; save
    ``<out>/<name>.json`` and ``<out>/<name>.png`` when ``out`` is given; return the result.

    The result records its key, parameters and provenance (:func:`record`)."""
    entry = get(key)
    kw = params_for(entry, quick=quick, **params)
    result = record(entry, entry.run(**kw), quick=quick, params=kw)
    if out is not None:
        save(entry, result, out)
    return result


def is_complete(entry: Entry, out: str | Path, *, quick: bool | None = None, seed: int | None = None) -> bool:
    """True when ``out`` holds a finished result of ``entry`` (its JSON, marked complete, with the same
    ``quick`` and ``seed`` when given, and its PNG when the entry plots)."""
    import json

    out = Path(out)
    try:
        doc = json.loads((out / f"{entry.name}.json").read_text())
    except (OSError, ValueError):
        return False
    rec = doc.get("run") if isinstance(doc, dict) else None
    if not isinstance(rec, dict) or rec.get("key") != entry.key or not rec.get("complete", False):
        return False
    if quick is not None and bool(rec.get("quick")) != bool(quick):
        return False
    if seed is not None and "seed" in (rec.get("params") or {}) and rec["params"]["seed"] != seed:
        return False
    return entry.plot is None or (out / f"{entry.name}.png").is_file()


def save(entry: Entry, result: Any, out: str | Path) -> list[Path]:
    """Write the result's PNG and JSON into ``out``; return the paths (JSON first).

    The PNG is drawn first and the JSON written last (through a temporary file), so a complete
    JSON in ``out`` means the step finished: ``--resume`` relies on it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if entry.plot is not None:
        png = out / f"{entry.name}.png"
        entry.plot(result, png)
        paths.append(png)
    return [write_atomic(out / f"{entry.name}.json", result), *paths]


def write_atomic(path: str | Path, obj: Any) -> Path:
    """``write_json`` through a temporary file and a rename: never a half-written JSON."""
    import os

    from memcim.io import write_json

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write_json(tmp, obj)
    os.replace(tmp, path)
    return path
