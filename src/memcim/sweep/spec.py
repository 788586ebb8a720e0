"""Sweep specifications: parse and validate ``SPEC.toml`` into a list of points.

A spec names *what* each point computes and *which* parameters vary::

    [sweep]
    name = "noise-vs-adc"          # optional; default: the spec file's stem
    task = "vmm"                   # a built-in task (memcim.sweep.tasks) or "package.module:function"
    # command = "lowrank"          # ... or a memcim CLI subcommand, run in-process with --json
    base = "realistic"             # base hardware config: a preset name or a .toml/.json file
    seeds = [0, 1, 2]              # or a count: seeds = 3 means [0, 1, 2]
    store = "noise.sqlite"         # optional default store (relative to the spec file)

    [fixed]                        # the same for every point
    size = 64
    adc.enabled = true

    [grid]                         # cartesian product (or [random] with samples = N in [sweep])
    device.prog_sigma_rel = [0.0, 0.02, 0.05]
    adc.bits = [4, 6, 8]

Dotted names (``section.field``) are hardware settings, checked against the fields of
:class:`memcim.config.HardwareConfig`; plain names are keyword arguments of the task (checked
against its signature) or long options of the CLI command (``matrix_seed`` -> ``--matrix-seed``).

``[random]`` draws ``samples`` points with ``numpy.random.default_rng(sample_seed)``; each
parameter is a distribution: ``{uniform = [lo, hi]}``, ``{loguniform = [lo, hi]}``,
``{randint = [lo, hi]}`` (both ends included) or ``{choice = [...]}`` (a plain list means choice).

Every point is crossed with every seed. A bad spec raises a one-line ``ValueError``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import inspect
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from memcim.config import HardwareConfig, resolve_config

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
_SWEEP_KEYS = ("name", "task", "command", "base", "seeds", "store", "samples", "sample_seed")


@dataclass(frozen=True)
class Point:
    """One computation of a sweep.

    Attributes
    ----------
    index : position in the spec's order (0-based).
    params : the varied parameters of this point (dotted hardware names and task arguments).
    seed : the seed passed to the task (None when the spec has no ``seeds``).
    point_id : a hash of the task, the fixed and varied parameters and the seed: the same
        computation has the same id in every run, which is what ``--resume`` matches on.
    """

    index: int
    params: dict[str, Any]
    seed: int | None
    point_id: str


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep.

    Attributes
    ----------
    name : sweep name.
    kind : "task" (a Python function) or "command" (a memcim CLI subcommand).
    target : the task name / "module:function", or the CLI subcommand name.
    base : the base hardware config as a dict (None when the target takes no config).
    fixed : parameters shared by every point.
    params : the names of the varied parameters, in spec order.
    points : every point, grid or random samples crossed with seeds.
    store : default store path from the spec (None: chosen by the caller).
    text : the spec's TOML text (recorded in the store).
    """

    name: str
    kind: str
    target: str
    base: dict | None
    fixed: dict[str, Any]
    params: tuple[str, ...]
    points: tuple[Point, ...]
    seed_arg: str | None
    store: str | None = None
    text: str = ""
    mode: str = "grid"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def task_ref(self) -> dict:
        """What a worker needs to run any point: plain data, picklable and JSON-able."""
        return {"kind": self.kind, "target": self.target, "base": self.base, "fixed": self.fixed,
                "seed_arg": self.seed_arg, "sweep": self.name}


# ---- parameter names ---------------------------------------------------------------------------
def hardware_fields() -> dict[str, tuple[str, ...]]:
    """Valid dotted hardware names: section -> field names."""
    return HardwareConfig.fields()


def _check_hw_name(where: str, name: str) -> None:
    sec, _, fld = name.partition(".")
    secs = hardware_fields()
    if sec not in secs:
        raise ValueError(f"{where}: unknown parameter {name!r}; dotted names must start with a hardware section "
                         f"({', '.join(secs)})")
    if fld not in secs[sec]:
        raise ValueError(f"{where}: unknown parameter {name!r}; {sec} has the fields {', '.join(secs[sec])}")


def apply_hw(base: HardwareConfig, settings: dict[str, Any]) -> HardwareConfig:
    """``base`` with dotted settings (``{"adc.bits": 6}``) applied through :meth:`HardwareConfig.set`."""
    return base.set(dict(settings)) if settings else base


def split_params(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hardware settings with dotted names, plain arguments)."""
    hw = {k: v for k, v in values.items() if "." in k}
    kw = {k: v for k, v in values.items() if "." not in k}
    return hw, kw


# ---- targets -----------------------------------------------------------------------------------
def resolve_task(target: str) -> Callable[..., dict]:
    """The function behind a task name: a built-in of :mod:`memcim.sweep.tasks` or ``"module:function"``."""
    from memcim.sweep import tasks

    if ":" not in target:
        if target not in tasks.TASKS:
            raise ValueError(f"sweep.task: unknown task {target!r}; built-in tasks: {', '.join(sorted(tasks.TASKS))}, "
                             "or give 'package.module:function'")
        return tasks.TASKS[target]
    mod_name, _, fn_name = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"sweep.task: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"sweep.task: {mod_name!r} has no function {fn_name!r}")
    return fn


def command_parser(name: str) -> argparse.ArgumentParser:
    """The argparse parser of ``memcim <name>``."""
    from memcim.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if name not in sub.choices:
        raise ValueError(f"sweep.command: unknown memcim command {name!r}; available: {', '.join(sorted(sub.choices))}")
    return sub.choices[name]


def command_options(name: str) -> dict[str, argparse.Action]:
    """Long option name without dashes, underscores for dashes (``matrix_seed``) -> its argparse action."""
    p = command_parser(name)
    out = {}
    for a in p._actions:
        for s in a.option_strings:
            if s.startswith("--"):
                out[s[2:].replace("-", "_")] = a
    return out


def _target_arguments(kind: str, target: str) -> tuple[set[str] | None, bool, bool, set[str]]:
    """(accepted plain argument names or None for any, takes a hardware config, takes a seed,
    required argument names)."""
    if kind == "task":
        fn = resolve_task(target)
        sig = inspect.signature(fn)
        names = {n for n, p in sig.parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        required = {n for n, p in sig.parameters.items() if n in names and p.default is p.empty}
        anykw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        return (None if anykw else names - {"hw"}), "hw" in names, ("seed" in names or anykw), required
    opts = command_options(target)
    if "json" not in opts:
        raise ValueError(f"sweep.command: memcim {target} has no --json option, so its results cannot be captured")
    names = set(opts) - {"json", "out", "help", "config", "preset"}
    required = {n for n, a in opts.items() if getattr(a, "required", False)}
    return names, "config" in opts, "seed" in opts, required


# ---- TOML helpers ------------------------------------------------------------------------------
def _is_dist(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and next(iter(v)) in DISTRIBUTIONS


def _flatten(table: dict, random: bool = False, prefix: str = "") -> dict[str, Any]:
    """Unquoted dotted keys (``device.g_max = ...``, parsed by TOML as nested tables) -> dotted names.

    In a [random] table, an inline table of lists (``{uniform = [lo, hi]}``) is a distribution.
    """
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (not random or (not prefix and k in HardwareConfig.fields())
                                    or any(isinstance(x, dict) for x in v.values())):
            out.update(_flatten(v, random, key + "."))
        else:
            out[key] = v
    return out


def _jsonable(where: str, name: str, v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{where}: {name} = {v!r} is not allowed; values must be finite")
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [_jsonable(where, name, x) for x in v]
    raise ValueError(f"{where}: {name} = {v!r} is not allowed; use numbers, strings, booleans or lists of them")


def _abs_file(v: Any, root: Path) -> Any:
    if isinstance(v, list):
        return [_abs_file(x, root) for x in v]
    if isinstance(v, str) and v and not Path(v).is_absolute() and (root / v).is_file():
        return str((root / v).resolve())
    return v


def point_id(task_ref: dict, params: dict[str, Any], seed: int | None) -> str:
    """Content hash of one computation (task, base config, fixed and varied parameters, seed)."""
    key = {"kind": task_ref["kind"], "target": task_ref["target"], "base": task_ref["base"],
           "fixed": task_ref["fixed"], "params": params, "seed": seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _seeds(v: Any) -> list[int] | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ValueError(f"sweep.seeds: {v} is not allowed; give a count >= 1 or a list of integer seeds")
        return list(range(v))
    if isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v):
        if len(set(v)) != len(v):
            raise ValueError(f"sweep.seeds: {v} repeats a seed; each seed must appear once")
        return list(v)
    raise ValueError(f"sweep.seeds: {v!r} is not allowed; give a count >= 1 or a non-empty list of integers >= 0")


def _sample(name: str, dist: Any, n: int, rng) -> list:
    if isinstance(dist, list):
        dist = {"choice": dist}
    if not _is_dist(dist):
        raise ValueError(f"random: {name} = {dist!r} is not a distribution; use {{uniform = [lo, hi]}}, "
                         "{loguniform = [lo, hi]}, {randint = [lo, hi]} or {choice = [...]}")
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"random: {name} has an empty choice; give at least one value")
        return [arg[int(i)] for i in rng.integers(0, len(arg), size=n)]
    ok = (isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                          and math.isfinite(a) for a in arg))
    if not ok or arg[0] > arg[1] or (kind == "loguniform" and arg[0] <= 0):
        raise ValueError(f"random: {name} = {{{kind} = {arg!r}}} is not allowed; give [lo, hi] with lo <= hi"
                         + (" and lo > 0" if kind == "loguniform" else ""))
    lo, hi = arg
    if kind == "uniform":
        return [float(v) for v in rng.uniform(lo, hi, size=n)]
    if kind == "loguniform":
        return [float(v) for v in math.e ** rng.uniform(math.log(lo), math.log(hi), size=n)]
    if not (float(lo).is_integer() and float(hi).is_integer()):
        raise ValueError(f"random: {name} = {{randint = {arg!r}}} needs integer bounds")
    return [int(v) for v in rng.integers(int(lo), int(hi) + 1, size=n)]


# ---- the parser --------------------------------------------------------------------------------
def parse_spec(source: str | Path | dict, *, root: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep spec.

    Parameters
    ----------
    source : a path to ``SPEC.toml``, or the spec already parsed into a dict.
    root : directory that relative paths in the spec (``base``, ``store``) are relative to;
        default: the spec file's directory (or the working directory for a dict).

    Returns
    -------
    SweepSpec with every point expanded.

    Raises
    ------
    ValueError : one line naming the bad entry and what is allowed.
    """
    text = ""
    name_default = "sweep"
    if isinstance(source, dict):
        d = source
        root = Path(root or ".")
    else:
        p = Path(source)
        if not p.is_file():
            raise ValueError(f"SPEC: file not found: {p}")
        text = p.read_text()
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"SPEC: {p} is not valid TOML ({e})") from None
        root = Path(root) if root is not None else p.parent
        name_default = p.stem
    unknown = sorted(set(d) - {"sweep", "fixed", "grid", "random"})
    if unknown:
        raise ValueError(f"SPEC: unknown table [{unknown[0]}]; allowed: [sweep], [fixed], [grid], [random]")
    sw = d.get("sweep")
    if not isinstance(sw, dict):
        raise ValueError("SPEC: missing [sweep] table (with task = \"...\" or command = \"...\")")
    bad = sorted(set(sw) - set(_SWEEP_KEYS))
    if bad:
        raise ValueError(f"sweep.{bad[0]}: unknown key; allowed keys: {', '.join(_SWEEP_KEYS)}")
    if ("task" in sw) == ("command" in sw):
        raise ValueError("sweep.task/sweep.command: give exactly one: task = \"vmm\" (or \"module:function\") "
                         "or command = \"<memcim subcommand>\"")
    kind = "task" if "task" in sw else "command"
    target = sw[kind]
    if not isinstance(target, str) or not target:
        raise ValueError(f"sweep.{kind}: expected a non-empty string, got {target!r}")
    accepted, takes_hw, takes_seed, required = _target_arguments(kind, target)

    name = sw.get("name", name_default)
    if not isinstance(name, str) or not name:
        raise ValueError(f"sweep.name: expected a non-empty string, got {name!r}")

    if not isinstance(d.get("fixed", {}), dict):
        raise ValueError("fixed: expected a table of parameters")
    fixed = _flatten(d.get("fixed", {}))
    if "grid" in d and "random" in d:
        raise ValueError("SPEC: give either [grid] or [random], not both")
    mode = "random" if "random" in d else "grid"
    if mode not in d:
        raise ValueError("SPEC: missing [grid] (or [random]) table: nothing to sweep")
    varied = d[mode]
    if not isinstance(varied, dict):
        raise ValueError(f"{mode}: expected a table of parameters")
    varied = _flatten(varied, random=mode == "random")
    if not varied:
        raise ValueError(f"{mode}: empty {mode}; give at least one parameter with values, e.g. adc.bits = [4, 6, 8]")

    seeds = _seeds(sw.get("seeds"))
    seed_arg = None
    if seeds is not None:
        if not takes_seed:
            raise ValueError(f"sweep.seeds: {target} takes no seed argument; remove seeds")
        seed_arg = "seed"

    # names: dotted -> hardware fields, plain -> target arguments
    for where, names in (("fixed", list(fixed)), (mode, list(varied))):
        for n in names:
            if "." in n:
                if not takes_hw:
                    raise ValueError(f"{where}: unknown parameter {n!r}; {target} takes no hardware config "
                                     f"({'no hw argument' if kind == 'task' else 'no --config option'})")
                _check_hw_name(where, n)
            else:
                if n in ("seed", "seeds") and seeds is not None:
                    raise ValueError(f"{where}: {n!r} is set by sweep.seeds; remove it here")
                if n == "hw":
                    raise ValueError(f"{where}: 'hw' is built from sweep.base and dotted names; set hardware fields "
                                     "as section.field")
                if accepted is not None and n not in accepted:
                    msg = f"{where}: unknown parameter {n!r}; {target} accepts: {', '.join(sorted(accepted)) or 'none'}"
                    raise ValueError(msg + (" and dotted hardware names (section.field)" if takes_hw else ""))
    missing = sorted(required - set(fixed) - set(varied) - {"hw"} - ({"seed"} if seeds is not None else set()))
    if missing:
        raise ValueError(f"fixed: {target} needs {missing[0]!r}; give it in [fixed] or in [{mode}]")
    dup = sorted(set(fixed) & set(varied))
    if dup:
        raise ValueError(f"{mode}: {dup[0]!r} is also in [fixed]; set it in one place")
    fixed = {k: _jsonable("fixed", k, v) for k, v in fixed.items()}
    if kind == "command":  # a file named relative to the spec becomes absolute, so any worker finds it
        fixed = {k: _abs_file(v, root) for k, v in fixed.items()}
        varied = {k: _abs_file(v, root) for k, v in varied.items()}

    # base hardware config
    base = None
    if takes_hw:
        b = sw.get("base", "ideal")
        if not isinstance(b, str):
            raise ValueError(f"sweep.base: expected a preset name or a config file, got {b!r}")
        bpath = Path(b) if Path(b).is_absolute() else root / b
        base_hw = resolve_config(str(bpath) if b.endswith((".toml", ".json")) else b)
        fixed_hw, _ = split_params(fixed)
        try:
            base_hw = apply_hw(base_hw, fixed_hw)
        except ValueError as e:
            raise ValueError(f"fixed: {e}") from None
        base = base_hw.to_dict()
    elif "base" in sw:
        raise ValueError(f"sweep.base: {target} takes no hardware config; remove base")

    # the varied values
    combos: list[dict[str, Any]]
    if mode == "grid":
        if "samples" in sw or "sample_seed" in sw:
            raise ValueError("sweep.samples: only applies to a [random] sweep")
        lists = {}
        for n, v in varied.items():
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise ValueError(f"grid: {n} = [] is an empty list; give at least one value")
            lists[n] = [_jsonable("grid", n, x) for x in vals]
        combos = [dict(zip(lists, vals)) for vals in itertools.product(*lists.values())]
    else:
        import numpy as np

        n = sw.get("samples")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sweep.samples: {n!r} is not allowed; a [random] sweep needs samples = N >= 1")
        sseed = sw.get("sample_seed", 0)
        if isinstance(sseed, bool) or not isinstance(sseed, int) or sseed < 0:
            raise ValueError(f"sweep.sample_seed: {sseed!r} is not allowed; must be an integer >= 0")
        rng = np.random.default_rng(sseed)
        cols = {k: _sample(k, v, n, rng) for k, v in varied.items()}
        combos = [{k: cols[k][i] for k in cols} for i in range(n)]

    # each varied hardware value must be valid on its own (combinations may still fail as points)
    if base is not None:
        base_hw = HardwareConfig.from_dict(base)
        seen: set = set()
        for c in combos:
            for k, v in c.items():
                if "." in k and (k, json.dumps(v)) not in seen:
                    seen.add((k, json.dumps(v)))
                    try:
                        apply_hw(base_hw, {k: v})
                    except ValueError as e:
                        raise ValueError(f"{mode}: {k} = {v!r} is invalid ({' '.join(str(e).split())})") from None

    spec = SweepSpec(name=name, kind=kind, target=target, base=base, fixed=fixed, params=tuple(varied),
                     points=(), seed_arg=seed_arg, store=None, text=text, mode=mode)
    ref = spec.task_ref
    points = []
    for c in combos:
        for s in (seeds if seeds is not None else [None]):
            points.append(Point(index=len(points), params=c, seed=s, point_id=point_id(ref, c, s)))
    ids = {p.point_id for p in points}
    if len(ids) != len(points):
        raise ValueError(f"{mode}: the sweep repeats a point ({len(points) - len(ids)} duplicate(s)); "
                         "give each value once")
    store = sw.get("store")
    if store is not None:
        if not isinstance(store, str) or not store:
            raise ValueError(f"sweep.store: expected a file path, got {store!r}")
        store = str(Path(store) if Path(store).is_absolute() else root / store)
    return dataclasses.replace(spec, points=tuple(points), store=store)
