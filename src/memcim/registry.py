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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

#: Modules whose import registers the built-in entries.
BUILTIN_MODULES = (
    "memcim.experiments.lowrank_fig2",
    "memcim.experiments.lowrank_hw",
    "memcim.experiments.lowrank_mlp",
    "memcim.experiments.memse_figs",
    "memcim.experiments.irdrop_figs",
    "memcim.experiments.convex_cim",
    "memcim.experiments.tasks",
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
    """

    key: str
    run: Callable[..., Any]
    title: str
    plot: Callable[[Any, Path], Any] | None = None
    quick: Mapping[str, Any] = field(default_factory=dict)
    paper: str | None = None
    summary: Callable[[Any], dict] | None = None
    reference: Mapping[str, str] = field(default_factory=dict)

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
             summary=None, reference: Mapping[str, str] | None = None):
    """Decorator: register ``fn`` under ``key`` (a key with ``/`` belongs to the paper before it)."""
    def deco(fn):
        paper = key.split("/", 1)[0] if "/" in key else None
        REGISTRY[key] = Entry(key, fn, title, plot, dict(quick or {}), paper, summary, dict(reference or {}))
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
    _load()
    return sorted(k for k, e in REGISTRY.items() if paper is None or e.paper == paper)


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


def run(key: str, *, quick: bool = False, out: str | Path | None = None, **params) -> Any:
    """Run ``key`` with its ``--quick`` parameters (when ``quick``) updated by ``params``; save
    ``<out>/<name>.json`` and ``<out>/<name>.png`` when ``out`` is given; return the result."""
    from memcim.io import write_json

    entry = get(key)
    kw = {**(entry.quick if quick else {}), **params}
    check_params(entry, kw)
    result = entry.run(**kw)
    if out is not None:
        save(entry, result, out)
    return result


def save(entry: Entry, result: Any, out: str | Path) -> list[Path]:
    """Write the result's JSON and PNG into ``out``; return the paths."""
    from memcim.io import write_json

    out = Path(out)
    paths = [write_json(out / f"{entry.name}.json", result)]
    if entry.plot is not None:
        png = out / f"{entry.name}.png"
        entry.plot(result, png)
        paths.append(png)
    return paths
