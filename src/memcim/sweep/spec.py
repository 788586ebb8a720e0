"""Sweep specifications: parse and validate ``SPEC.toml``; its points are enumerated lazily.

A spec names *what* each point computes (a task of :mod:`memcim.registry`, called directly) and
*which* of its parameters vary::

    [sweep]
    name = "noise-vs-adc"          # optional; default: the spec file's stem
    task = "simulate"              # a registry key: "simulate", "evaluate", "predict", "002/fig9a", ...
    hw = "generic"               # hardware: a preset name or a .toml/.json file
    seeds = [0, 1, 2]              # or a count: seeds = 3 means [0, 1, 2]
    store = "noise.sqlite"         # optional default store (relative to the spec file)
    # quick = true                 # start from the task's --quick parameters
    # allow_import = true          # with task = "package.module:function" (see below)

    [fixed]                        # the same for every point
    size = 64

    [grid]                         # cartesian product (or [random] with samples = N in [sweep])
    device.prog_sigma_rel = [0.0, 0.02, 0.05]
    adc.bits = [4, 6, 8]

Dotted names (``section.field``) are hardware settings, checked against the fields of
:class:`memcim.config.HardwareConfig` and applied to ``hw``; plain names are the task's own
keyword parameters (checked against its signature), by their library names (``chips``,
``seed``, ``data``, ``model``). ``hw`` itself may vary too: ``hw = ["ideal", "generic"]`` in
``[grid]``.

``[random]`` draws ``samples`` points with ``numpy.random.default_rng(sample_seed)``; each
parameter is a distribution: ``{uniform = [lo, hi]}``, ``{loguniform = [lo, hi]}``,
``{randint = [lo, hi]}`` (both ends included) or ``{choice = [...]}`` (a plain list means choice).

Every point is crossed with every seed. The number of points is counted before anything is
enumerated, and a sweep of more than ``max_points`` (default :data:`MAX_POINTS`, one million)
is refused; the points themselves are produced one at a time (:meth:`SweepSpec.iter_points`).

A task given as ``"package.module:function"`` imports and runs code named by the spec; it is
refused unless the spec says ``allow_import = true`` *and* the caller passes
``allow_import=True`` (``memcim sweep run --allow-import``), or the caller names its module
(``allow_modules=("mypkg",)``, ``memcim sweep run --allow-module mypkg``). A bad spec raises a one-line
``ValueError`` naming the spec key.

Examples
--------
>>> spec = parse_spec({"sweep": {"task": "sleep", "seeds": 2}, "grid": {"value": [1.0, 2.0]}})
>>> len(spec), [(p.params["value"], p.seed) for p in spec.iter_points()]
(4, [(1.0, 0), (1.0, 1), (2.0, 0), (2.0, 1)])
>>> parse_spec({"sweep": {"task": "sleep", "seeds": 10**9}, "grid": {"value": [1.0]}})
Traceback (most recent call last):
...
ValueError: sweep.seeds: the sweep has 1,000,000,000 points (value 1 x seeds 1000000000), more than max_points = 1,000,000; split it into smaller sweeps or raise max_points
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from memcim.config import HardwareConfig, resolve_config

#: Largest number of points (grid or samples, times seeds) a spec may have unless ``max_points``
#: says otherwise: a million rows is about what one SQLite store and one machine's day hold.
MAX_POINTS = 1_000_000
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
_SWEEP_KEYS = ("name", "task", "hw", "base", "seeds", "store", "samples", "sample_seed", "allow_import", "quick")

#: old task / command names -> the registry key that replaces them
RENAMED = {"vmm": "simulate", "circuit": "simulate", "mse": "predict", "lowrank-fig2": "000/fig2",
           "lowrank-hw": "000/hw", "lowrank-mlp": "000/mlp", "irdrop-fig": "002/<figure>",
           "memse-fig": "001/<figure>", "experiment": "003/<experiment>"}


@dataclass(frozen=True)
class Point:
    """One computation of a sweep.

    Attributes
    ----------
    index : position in the spec's order (0-based).
    params : the varied parameters of this point (dotted hardware names and task arguments).
    seed : the seed passed to the task (None when the spec has no ``seeds``).
    point_id : a hash of the task, the hardware, the fixed and varied parameters and the seed:
        the same computation has the same id in every run, which is what ``resume`` matches on.
    """

    index: int
    params: dict[str, Any]
    seed: int | None
    point_id: str


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep; its points are produced on demand by :meth:`iter_points`.

    Attributes
    ----------
    name : sweep name.
    kind : "registry" (a task of :mod:`memcim.registry`) or "import" (``"module:function"``).
    target : the registry key, or ``"module:function"``.
    base : the hardware config as a dict (None when the task takes no ``hw``).
    fixed : parameters shared by every point.
    params : the names of the varied parameters, in spec order.
    mode : "grid" or "random".
    values : grid: the list of values of each parameter; random: the drawn column of each.
    seeds : the seeds (a list or a range), or None.
    store : default store path from the spec (None: chosen by the caller).
    text : the spec's TOML text (recorded in the store).
    quick : the task's ``--quick`` parameters when the spec asks for them (else empty).
    allow_import : a ``"module:function"`` task was allowed by both the spec and the caller.
    """

    name: str
    kind: str
    target: str
    base: dict | None
    fixed: dict[str, Any]
    params: tuple[str, ...]
    mode: str
    values: dict[str, list]
    seeds: Any
    seed_arg: str | None
    store: str | None = None
    text: str = ""
    quick: dict = field(default_factory=dict)
    allow_import: bool = False
    root: str = "."

    def __len__(self) -> int:
        return count_points(self.mode, self.values, self.seeds)

    @property
    def task_ref(self) -> dict:
        """What a worker needs to run any point: plain data, picklable and JSON-able."""
        return {"kind": self.kind, "target": self.target, "base": self.base, "fixed": self.fixed,
                "seed_arg": self.seed_arg, "sweep": self.name, "quick": self.quick,
                "allow_import": self.allow_import, "root": self.root}

    def iter_points(self) -> Iterator[Point]:
        """Every point in spec order (grid or sample, then seed), one at a time."""
        ref = self.task_ref
        seeds = self.seeds if self.seeds is not None else [None]
        names = list(self.values)
        if self.mode == "grid":
            combos = itertools.product(*self.values.values())
        else:
            n = len(next(iter(self.values.values())))
            combos = (tuple(self.values[k][i] for k in names) for i in range(n))
        index = 0
        for vals in combos:
            c = dict(zip(names, vals))
            for s in seeds:
                yield Point(index=index, params=c, seed=s, point_id=point_id(ref, c, s))
                index += 1

    @property
    def points(self) -> tuple[Point, ...]:
        """Every point at once (for small sweeps; :meth:`iter_points` holds one at a time)."""
        return tuple(self.iter_points())


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


def resolve_hw(value: str, root: str | Path = ".", where: str = "sweep.hw") -> HardwareConfig:
    """A preset name, or a ``.toml``/``.json`` file (relative to ``root``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a preset name or a config file, got {value!r}")
    if value.endswith((".toml", ".json")) and not Path(value).is_absolute():
        value = str(Path(root) / value)
    try:
        return resolve_config(value)
    except ValueError as e:
        raise ValueError(f"{where}: {' '.join(str(e).split(': ', 1)[-1].split())}") from None


# ---- targets -----------------------------------------------------------------------------------
def _import_message(target: str, spec_ok: bool, caller_ok: bool) -> str:
    top = target.partition(":")[0].split(".")[0] or "MODULE"
    need = (f"sweep.task: {target!r} runs a function by module path, which can run any code; it needs "
            "allow_import = true in [sweep] and allow_import=True (memcim sweep run --allow-import), "
            f"or its module named on the command line: memcim sweep run --allow-module {top}")
    if spec_ok == caller_ok:
        return need
    return need + f"; missing: {'allow_import=True (--allow-import)' if spec_ok else 'allow_import = true in [sweep]'}"


def check_modules(modules: Any) -> tuple[str, ...]:
    """The modules named by ``--allow-module`` (``allow_modules=``): dotted Python names."""
    if isinstance(modules, str):
        modules = (modules,)
    out = []
    for m in modules or ():
        if not isinstance(m, str) or not m or not all(part.isidentifier() for part in m.split(".")):
            raise ValueError(f"allow_module: {m!r} is not a module name; give a dotted name such as mypkg "
                             "or mypkg.sub")
        out.append(m)
    return tuple(out)


def module_allowed(target: str, modules: Iterable[str]) -> bool:
    """Whether ``"module:function"`` lies in one of ``modules`` (the module itself or below it)."""
    mod = str(target).partition(":")[0]
    return any(mod == m or mod.startswith(m + ".") for m in modules)


def resolve_task(target: str, *, allow_import: bool = False) -> Callable[..., Any]:
    """The function behind a task: a :mod:`memcim.registry` key, or ``"module:function"`` when
    ``allow_import`` (both opt-ins given)."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"sweep.task: expected a non-empty string, got {target!r}")
    if ":" in target:
        if not allow_import:
            raise ValueError(_import_message(target, False, False))
        mod_name, _, fn_name = target.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"sweep.task: cannot import module {mod_name!r} ({e})") from None
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            raise ValueError(f"sweep.task: {mod_name!r} has no function {fn_name!r}")
        return fn
    from memcim import registry

    if target in RENAMED and target not in registry.keys():
        raise ValueError(f"sweep.task: {target!r} is now the registry task {RENAMED[target]!r}; "
                         f"write task = \"{RENAMED[target]}\"")
    try:
        return registry.get(target).run
    except ValueError:
        tasks = [k for k in registry.keys() if "/" not in k]
        raise ValueError(f"sweep.task: unknown task {target!r}; registered tasks: {', '.join(tasks)}, or a "
                         "paper figure such as 002/fig9a (memcim paper list)") from None


def _command_message(name: Any) -> str:
    from memcim import registry

    keys = registry.keys()
    key = name if isinstance(name, str) and name in keys else RENAMED.get(name) if isinstance(name, str) else None
    hint = f"task = \"{key}\"" if key else "task = \"<registry key>\" (memcim paper list; simulate, evaluate, predict)"
    return (f"sweep.command: specs no longer run CLI commands; name the registry task instead: {hint}, "
            "with its parameters by their library names (chips, seed, data, hw)")


def _target_arguments(fn: Callable) -> tuple[set[str] | None, bool, bool, set[str]]:
    """(accepted plain argument names or None for any, takes ``hw``, takes a seed, required names)."""
    sig = inspect.signature(fn)
    names = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {n for n, p in sig.parameters.items() if n in names and p.default is p.empty}
    anykw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return (None if anykw else names - {"hw"}), "hw" in names, ("seed" in names or anykw), required


def _default_hw(fn: Callable) -> str:
    p = inspect.signature(fn).parameters.get("hw")
    d = None if p is None else p.default
    return d if isinstance(d, str) and d else "generic"


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
    """Content hash of one computation (task, hardware, fixed and varied parameters, seed)."""
    key = {"kind": task_ref["kind"], "target": task_ref["target"], "base": task_ref["base"],
           "fixed": task_ref["fixed"], "params": params, "seed": seed}
    if task_ref.get("quick"):
        key["quick"] = task_ref["quick"]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _seeds(v: Any):
    """None, a range (``seeds = N``) or a list of distinct integers >= 0."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ValueError(f"sweep.seeds: {v} is not allowed; give a count >= 1 or a list of integer seeds")
        return range(v)
    if isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63
                                         for s in v):
        if len(set(v)) != len(v):
            raise ValueError(f"sweep.seeds: {v} repeats a seed; each seed must appear once")
        return list(v)
    raise ValueError(f"sweep.seeds: {v!r} is not allowed; give a count >= 1 or a non-empty list of integers >= 0")


def count_points(mode: str, values: dict[str, list], seeds) -> int:
    n = math.prod(len(v) for v in values.values()) if mode == "grid" else len(next(iter(values.values())))
    return n * (len(seeds) if seeds is not None else 1)


def _check_size(mode: str, factors: list[tuple[str, str, int]], max_points: int) -> None:
    """Refuse a sweep of more than ``max_points`` points, naming the spec key that contributes most."""
    total = math.prod(n for _, _, n in factors)
    if total <= max_points:
        return
    key = max(factors, key=lambda f: f[2])[0]
    parts = " x ".join(f"{label} {n}" for _, label, n in factors)
    raise ValueError(f"{key}: the sweep has {total:,} points ({parts}), more than max_points = {max_points:,}; "
                     "split it into smaller sweeps or raise max_points")


def _dist(name: str, dist: Any) -> tuple[str, Any]:
    if isinstance(dist, list):
        dist = {"choice": dist}
    if not _is_dist(dist):
        raise ValueError(f"random: {name} = {dist!r} is not a distribution; use {{uniform = [lo, hi]}}, "
                         "{loguniform = [lo, hi]}, {randint = [lo, hi]} or {choice = [...]}")
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"random: {name} has an empty choice; give at least one value")
        return kind, [_jsonable("random", name, a) for a in arg]
    ok = (isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                          and math.isfinite(a) for a in arg))
    if not ok or arg[0] > arg[1] or (kind == "loguniform" and arg[0] <= 0):
        raise ValueError(f"random: {name} = {{{kind} = {arg!r}}} is not allowed; give [lo, hi] with lo <= hi"
                         + (" and lo > 0" if kind == "loguniform" else ""))
    if kind == "randint" and not (float(arg[0]).is_integer() and float(arg[1]).is_integer()):
        raise ValueError(f"random: {name} = {{randint = {arg!r}}} needs integer bounds")
    return kind, arg


def _sample(kind: str, arg: Any, n: int, rng) -> list:
    if kind == "choice":
        return [arg[int(i)] for i in rng.integers(0, len(arg), size=n)]
    lo, hi = arg
    if kind == "uniform":
        return [float(v) for v in rng.uniform(lo, hi, size=n)]
    if kind == "loguniform":
        return [float(v) for v in math.e ** rng.uniform(math.log(lo), math.log(hi), size=n)]
    return [int(v) for v in rng.integers(int(lo), int(hi) + 1, size=n)]


def _int_key(sw: dict, key: str, default: Any, lo: int) -> Any:
    v = sw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"sweep.{key}: {v!r} is not allowed; must be an integer >= {lo}")
    return v


# ---- the parser --------------------------------------------------------------------------------
def parse_spec(source: str | Path | dict, *, root: str | Path | None = None, allow_import: bool = False,
               max_points: int = MAX_POINTS, allow_modules: Iterable[str] = ()) -> SweepSpec:
    """Read and validate a sweep spec.

    Parameters
    ----------
    source : a path to ``SPEC.toml``, or the spec already parsed into a dict.
    root : directory that relative paths in the spec (``hw``, ``store``, data files) are relative
        to; default: the spec file's directory (or the working directory for a dict).
    allow_import : the caller's half of the opt-in for ``task = "module:function"`` (the spec's
        half is ``allow_import = true`` in ``[sweep]``).
    allow_modules : modules whose functions a ``"module:function"`` task may run without the two
        opt-ins above (``memcim sweep run --allow-module mypkg``): ``mypkg`` allows
        ``mypkg:fn`` and ``mypkg.sub:fn``, nothing else.
    max_points : refuse a sweep with more points than this (counted before any is enumerated).

    Returns
    -------
    SweepSpec, whose points are enumerated lazily.

    Raises
    ------
    ValueError : one line naming the bad spec key and what is allowed.
    """
    text = ""
    name_default = "sweep"
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points: {max_points!r} is not allowed; must be an integer >= 1")
    if isinstance(source, dict):
        d = source
        root = Path(root or ".")
    else:
        p = Path(source)
        if not p.is_file():
            raise ValueError(f"SPEC: file not found: {p}")
        try:
            text = p.read_text()
            d = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"SPEC: {p} is not valid TOML ({' '.join(str(e).split())})") from None
        root = Path(root) if root is not None else p.parent
        name_default = p.stem
    unknown = sorted(set(d) - {"sweep", "fixed", "grid", "random"})
    if unknown:
        raise ValueError(f"SPEC: unknown table [{unknown[0]}]; allowed: [sweep], [fixed], [grid], [random]")
    sw = d.get("sweep")
    if not isinstance(sw, dict):
        raise ValueError("SPEC: missing [sweep] table (with task = \"...\")")
    if "command" in sw:
        raise ValueError(_command_message(sw["command"]))
    bad = sorted(set(sw) - set(_SWEEP_KEYS))
    if bad:
        raise ValueError(f"sweep.{bad[0]}: unknown key; allowed keys: {', '.join(_SWEEP_KEYS)}")
    if "task" not in sw:
        raise ValueError("sweep.task: missing; name a registry task: task = \"simulate\" (or evaluate, predict, "
                         "002/fig9a, ...)")
    target = sw["task"]
    if not isinstance(target, str) or not target:
        raise ValueError(f"sweep.task: expected a non-empty string, got {target!r}")
    spec_allow = sw.get("allow_import", False)
    if not isinstance(spec_allow, bool):
        raise ValueError(f"sweep.allow_import: expected true or false, got {spec_allow!r}")
    kind = "import" if ":" in target else "registry"
    allow_modules = check_modules(allow_modules)
    if kind == "import" and not (spec_allow and allow_import is True) and not module_allowed(target, allow_modules):
        raise ValueError(_import_message(target, spec_allow, allow_import is True))
    fn = resolve_task(target, allow_import=kind == "import")
    accepted, takes_hw, takes_seed, required = _target_arguments(fn)
    quick: dict = {}
    if sw.get("quick", False) not in (True, False):
        raise ValueError(f"sweep.quick: expected true or false, got {sw['quick']!r}")
    if sw.get("quick"):
        if kind != "registry":
            raise ValueError("sweep.quick: only applies to a registry task")
        from memcim import registry

        quick = {k: _jsonable("sweep.quick", k, v) for k, v in registry.get(target).quick.items()}

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
            raise ValueError(f"sweep.seeds: {target} takes no seed parameter; remove seeds")
        seed_arg = "seed"

    if "hw" in sw and "base" in sw:
        raise ValueError("sweep.base: the old name of sweep.hw; give only hw")
    hw_key = "sweep.hw" if "hw" in sw else "sweep.base"
    for where, names in (("fixed", list(fixed)), (mode, list(varied))):
        for n in names:
            if "." in n:
                if not takes_hw:
                    raise ValueError(f"{where}: unknown parameter {n!r}; {target} takes no hardware (no hw parameter)")
                _check_hw_name(where, n)
            elif n == "hw":
                if not takes_hw:
                    raise ValueError(f"{where}: unknown parameter 'hw'; {target} takes no hardware")
                if where == "fixed":
                    raise ValueError("fixed: hw belongs in [sweep] (hw = \"generic\") or, to vary it, in "
                                     f"[{mode}]")
                if "hw" in sw or "base" in sw:
                    raise ValueError(f"{mode}: hw is also given in [sweep]; give it in one place")
            else:
                if n in ("seed", "seeds") and seeds is not None:
                    raise ValueError(f"{where}: {n!r} is set by sweep.seeds; remove it here")
                if accepted is not None and n not in accepted:
                    msg = f"{where}: unknown parameter {n!r}; {target} accepts: {', '.join(sorted(accepted)) or 'none'}"
                    raise ValueError(msg + (" and dotted hardware names (section.field)" if takes_hw else ""))
    missing = sorted(required - set(fixed) - set(varied) - set(quick) - {"hw"}
                     - ({"seed"} if seeds is not None else set()))
    if missing:
        raise ValueError(f"fixed: {target} needs {missing[0]!r}; give it in [fixed] or in [{mode}]")
    dup = sorted(set(fixed) & set(varied))
    if dup:
        raise ValueError(f"{mode}: {dup[0]!r} is also in [fixed]; set it in one place")
    fixed = {k: _abs_file(_jsonable("fixed", k, v), root) for k, v in fixed.items()}

    # hardware: [sweep] hw (or its old name base), else the task's own default
    base = None
    if takes_hw:
        b = sw.get("hw", sw.get("base", _default_hw(fn)))
        base_hw = resolve_hw(b, root, hw_key)
        fixed_hw, _ = split_params(fixed)
        try:
            base_hw = apply_hw(base_hw, fixed_hw)
        except ValueError as e:
            raise ValueError(f"fixed: {' '.join(str(e).split())}") from None
        base = base_hw.to_dict()
    elif "hw" in sw or "base" in sw:
        raise ValueError(f"{hw_key}: {target} takes no hardware; remove it")

    # the varied values: counted before anything is drawn or enumerated
    values: dict[str, list] = {}
    if mode == "grid":
        if "samples" in sw or "sample_seed" in sw:
            raise ValueError("sweep.samples: only applies to a [random] sweep")
        for n, v in varied.items():
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise ValueError(f"grid: {n} = [] is an empty list; give at least one value")
            vals = [_abs_file(_jsonable("grid", n, x), root) for x in vals]
            keys = [json.dumps(x, sort_keys=True) for x in vals]
            if len(set(keys)) != len(keys):
                rep = next(x for i, x in enumerate(vals) if keys[i] in keys[:i])
                raise ValueError(f"grid: {n} repeats the value {rep!r} (the sweep would repeat a point); "
                                 "give each value once")
            values[n] = vals
        factors = [(f"grid.{n}", n, len(v)) for n, v in values.items()]
    else:
        n_samples = _int_key(sw, "samples", None, 1) if "samples" in sw else None
        if n_samples is None:
            raise ValueError("sweep.samples: missing; a [random] sweep needs samples = N >= 1")
        sseed = _int_key(sw, "sample_seed", 0, 0)
        dists = {k: _dist(k, v) for k, v in varied.items()}
        factors = [("sweep.samples", "samples", n_samples)]
    if seeds is not None:
        factors.append(("sweep.seeds", "seeds", len(seeds)))
    _check_size(mode, factors, max_points)

    # each varied hardware value must be valid on its own (combinations may still fail as points)
    if base is not None:
        base_hw = HardwareConfig.from_dict(base)
        checks = values.items() if mode == "grid" else (
            (k, a if kind_ == "choice" else list(a)) for k, (kind_, a) in dists.items())
        for k, vals in checks:
            for v in vals:
                if k == "hw":
                    resolve_hw(v, root, f"{mode}: hw")
                elif "." in k:
                    try:
                        apply_hw(base_hw, {k: v})
                    except ValueError as e:
                        raise ValueError(f"{mode}: {k} = {v!r} is invalid ({' '.join(str(e).split())})") from None

    if mode == "random":
        import numpy as np

        rng = np.random.default_rng(sseed)
        values = {k: _sample(kind_, a, n_samples, rng) for k, (kind_, a) in dists.items()}
        seen: set[int] = set()
        for i in range(n_samples):
            h = hash(json.dumps([values[k][i] for k in values]))
            if h in seen:
                raise ValueError(f"random: sample {i} repeats an earlier one (the sweep would repeat a point); "
                                 "widen the distributions or lower sweep.samples")
            seen.add(h)

    store = sw.get("store")
    if store is not None:
        if not isinstance(store, str) or not store:
            raise ValueError(f"sweep.store: expected a file path, got {store!r}")
        store = str(Path(store) if Path(store).is_absolute() else root / store)
    return SweepSpec(name=name, kind=kind, target=target, base=base, fixed=fixed, params=tuple(varied),
                     mode=mode, values=values, seeds=seeds, seed_arg=seed_arg, store=store, text=text,
                     quick=quick, allow_import=kind == "import", root=str(Path(root).resolve()))
