"""``memcim paper list|run|reproduce``: the papers' figures, from the registry.

* ``memcim paper list`` -- every registered figure (``002/fig9a``), its title and its ``--quick`` settings.
* ``memcim paper run KEY [--quick] --out DIR`` -- one figure: ``<out>/<name>.json`` (the result, its
  parameters, seed and provenance) and ``<name>.png``.
* ``memcim paper reproduce [all|000|001|002|003] [--quick] [--resume] --out DIR`` -- every figure
  of a paper (or all) into ``REPORT.md``, each measured number beside the paper's.

The shared flags reach each figure under its own parameter names: ``--chips`` sets ``chips`` /
``trials`` / ``mc_trials`` / ``n_draws`` (whichever it has), ``--data mnist:test:300`` sets
``dataset`` and ``n_images`` / ``n_test`` / ``n_inputs``, ``--hw``/``--set`` the ``hw`` of a
figure that takes hardware, ``--model`` its ``model`` (or ``models``); ``--param NAME=VALUE``
sets any other parameter (``memcim paper list --params`` shows them).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from memcim.commands import _shared

#: shared flag -> the figure parameters it may set, first match wins.
CHIPS_PARAMS = ("chips", "n_chips", "trials", "mc_trials", "n_draws")
COUNT_PARAMS = ("n_images", "n_test", "n_inputs")
PAPER_CHOICES = ("all", "000", "001", "002", "003")


def register(sub) -> None:
    p = sub.add_parser("paper", help="the papers' figures: list, run one, reproduce all into a report",
                       description="Every figure of papers 000-003 is registered under a key like 002/fig9a. "
                                   "list shows them, run makes one (JSON + PNG), reproduce makes a paper's (or "
                                   "all) into REPORT.md with the paper's values beside memcim's.")
    ps = p.add_subparsers(dest="paper_command", metavar="ACTION")
    p.set_defaults(_parser=p)  # `memcim paper` alone prints this parser's help

    lp = ps.add_parser("list", help="registered figures, their titles and --quick settings",
                       description="List every registered paper figure with its title and --quick settings.")
    lp.add_argument("--params", action="store_true", help="also list each figure's parameters and defaults")
    lp.add_argument("--json", action="store_true", help="print the list as JSON")
    lp.set_defaults(func=run_list)

    rp = ps.add_parser("run", help="run one figure (KEY like 002/fig9a): <name>.json + <name>.png",
                       description="Run one registered figure and write <out>/<name>.json (result, parameters, "
                                   "seed, provenance) and <name>.png. Shared flags map onto the figure's own "
                                   "parameters; --param NAME=VALUE sets any other (memcim paper list --params).")
    rp.add_argument("key", metavar="KEY", help="figure key, e.g. 002/fig9a (memcim paper list)")
    rp.add_argument("--quick", action="store_true", help="the figure's smaller settings (minutes on 2 cores)")
    _shared.add_hw(rp, default=None, extra="; only for figures that take hardware (002, 003)")
    rp.add_argument("--chips", type=int, default=None, metavar="N",
                    help="programmed chips / Monte Carlo trials of the figure (default: the figure's own)")
    _shared.add_seed(rp)
    rp.add_argument("--data", default=None, metavar="SPEC",
                    help="DATASET[:SPLIT][:N], e.g. mnist:test:300 (test split; default: the figure's own)")
    rp.add_argument("--model", default=None, metavar="NAME|FILE",
                    help="reference model name or torch.save(model) file, for figures that take a model")
    rp.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="any parameter of the figure, repeatable; VALUE is JSON or a comma list "
                         "(--param io_bits=4,8,null --param size=16)")
    _shared.add_out(rp, what="the figure")
    rp.set_defaults(func=run_one)

    rr = ps.add_parser("reproduce", help="every figure of a paper (or all) into REPORT.md",
                       description="Run every registered figure of paper 000, 001, 002, 003 or all, save each "
                                   "JSON and PNG under --out/<paper>/, and write --out/REPORT.md with each measured "
                                   "number beside the paper's. One line per step on stderr (start, end, elapsed "
                                   "time); a failing step is recorded and the run goes on; an interrupt writes the "
                                   "report with the steps not run marked.")
    rr.add_argument("paper", nargs="?", default="all", choices=PAPER_CHOICES, help="all (default) or one paper")
    rr.add_argument("--quick", action="store_true", help="every figure's smaller settings")
    rr.add_argument("--resume", action="store_true",
                    help="skip the steps whose complete result (same --quick and --seed) is already in --out")
    rr.add_argument("--report-only", action="store_true",
                    help="run nothing: rewrite REPORT.md from what --out holds (missing steps: not run)")
    _shared.add_seed(rr)
    rr.add_argument("--out", default="results/report", metavar="DIR",
                    help="report directory (default results/report)")
    rr.set_defaults(func=run_reproduce, _out_is_dir=True)


# ------------------------------------------------------------------ list
def run_list(args) -> int:
    from memcim import registry

    items = []
    for key in registry.keys():  # noqa: SIM118 - a function, not a dict
        e = registry.get(key)
        if e.paper is None:
            continue
        item = {"key": key, "title": e.title, "quick": dict(e.quick), "hardware": e.hardware}
        if args.params:
            item["params"] = {k: v for k, v in e.parameters().items() if k not in ("progress", "log", "checkpoint")}
        items.append(item)
    if args.json:
        from memcim.io import dumps

        print(dumps(items))
        return 0
    width = max((len(i["key"]) for i in items), default=4)
    for i in items:
        print(f"{i['key']:{width}s}  {i['title']}")
        quick = ", ".join(f"{k}={_short(v)}" for k, v in i["quick"].items()) or "same as full"
        print(f"{'':{width}s}  --quick: {quick}" + (f"; hardware: --hw (default {i['hardware']})"
                                                     if i["hardware"] else ""))
        if args.params:
            print(f"{'':{width}s}  params: " + ", ".join(f"{k}={_short(v)}" for k, v in i["params"].items()))
    return 0


def _short(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return ",".join("null" if x is None else _short(x) for x in v)
    return "null" if v is None else str(v)


# ------------------------------------------------------------------ run
def parse_value(raw: str):
    """``--param`` values: JSON (``3``, ``0.5``, ``null``, ``[2, 8]``, ``"x"``), else a comma list of
    them (``2,8`` -> ``[2, 8]``), else the plain string."""
    raw = raw.strip()
    try:
        return json.loads(raw)
    except ValueError:
        pass
    if "," in raw:
        return [parse_value(p) for p in raw.split(",") if p.strip()]
    if raw.lower() in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[raw.lower()]
    return raw


def parse_params(items) -> dict:
    out = {}
    for item in items or []:
        name, eq, raw = str(item).partition("=")
        name = name.strip()
        if not eq or not name or not raw.strip():
            raise ValueError(f"--param: {item!r} is not allowed; use NAME=VALUE (memcim paper list --params)")
        out[name] = parse_value(raw)
    return out


def shared_params(entry, args) -> dict:
    """The figure parameters the shared flags set (``--chips`` -> ``trials`` etc.)."""
    from memcim.data.spec import is_file_spec, parse_data_spec

    takes = entry.parameters()
    kw: dict = {}
    if "seed" in takes:
        kw["seed"] = args.seed
    if getattr(args, "chips", None) is not None:
        name = next((n for n in CHIPS_PARAMS if n in takes), None)
        if name is None:
            raise ValueError(f"chips: {entry.key} has no chips or Monte Carlo trials to set")
        kw[name] = args.chips
    if getattr(args, "data", None):
        if is_file_spec(args.data):
            raise ValueError(f"data: {args.data!r} is not allowed; a paper figure takes DATASET[:test][:N]")
        ds, split, n = parse_data_spec(args.data)
        if split != "test":
            raise ValueError(f"data: split {split!r} is not allowed; figures evaluate the test split")
        if "dataset" in takes:
            kw["dataset"] = ds
        elif ds != "mnist":
            raise ValueError(f"data: {entry.key} runs on mnist only, not {ds!r}")
        if n is not None:
            name = next((c for c in COUNT_PARAMS if c in takes), None)
            if name is None:
                raise ValueError(f"data: {entry.key} takes no number of samples")
            kw[name] = n
    if getattr(args, "model", None):
        if "model" in takes:
            kw["model"] = args.model
        elif "models" in takes:
            kw["models"] = tuple(m for m in args.model.split(",") if m)
        else:
            raise ValueError(f"model: {entry.key} takes no model")
    if getattr(args, "hw", None) or getattr(args, "settings", None):
        if entry.hardware is None or "hw" not in takes:
            raise ValueError(f"hw: {entry.key} takes no hardware (its physics are fixed by the paper)")
        kw["hw"] = _shared.hardware(args, default=entry.hardware)
    if "progress" in takes:
        kw["progress"] = sys.stderr.isatty()
    if "log" in takes:
        kw["log"] = lambda line: print(line, file=sys.stderr, flush=True)
    return kw


def run_one(args) -> int:
    from memcim import registry
    from memcim.io import dumps

    entry = registry.get(args.key)
    if entry.paper is None:
        raise ValueError(f"key: {args.key!r} is not a paper figure; see memcim paper list")
    given = parse_params(args.param)
    params = {**shared_params(entry, args), **given}
    if getattr(args, "model", None):
        check_models(args.model, params.get("dataset", "mnist"))
    kw = registry.params_for(entry, quick=args.quick, **params)
    out = Path(args.out) if args.out else None
    if out is not None and "checkpoint" in entry.parameters():
        shown = dict(kw)
        kw["checkpoint"] = lambda partial: registry.write_atomic(
            out / f"{entry.name}.json", registry.record(entry, partial, quick=args.quick, params=shown, complete=False))
    print(f"paper run {entry.key}: {entry.title}" + (" (quick)" if args.quick else ""), file=sys.stderr)
    try:
        result = registry.record(entry, entry.run(**kw), quick=args.quick, params=kw)
    except ValueError as e:  # a parameter the user gave with --param: say so
        head, sep, rest = str(e).partition(": ")
        if sep and head in given:
            raise ValueError(f"--param {head}: {rest}") from None
        raise
    except RuntimeError as e:  # torch's shape errors: a --model that does not fit the figure
        if not getattr(args, "model", None):
            raise
        raise ValueError(f"model: {args.model} does not fit {entry.key} ({' '.join(str(e).split())[:200]})") from None
    written = registry.save(entry, result, out) if out is not None else []
    if args.json:
        print(dumps(result))
        return 0
    head = entry.headline(result)
    width = max((len(k) for k in head), default=0)
    for k, v in head.items():
        ref = entry.reference.get(k)
        val = format(v, ".4g") if isinstance(v, float) else str(v)
        print(f"  {k:{width}s}  {val}" + (f"   (paper: {ref})" if ref else ""))
    if written:
        print("wrote " + ", ".join(str(w) for w in written))
    return 0


#: sample shape of each dataset a figure may evaluate (one sample, no batch axis)
SAMPLE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "digits": (1, 8, 8), "cifar10": (3, 32, 32)}


def check_models(spec: str, dataset: str) -> None:
    """Load every ``--model`` (comma list) the way the figures do, before any work: a model with a
    NaN or infinite weight, or one that does not accept the dataset's samples, is one line."""
    from memcim.nn.loading import fit_input, load_model

    shape = SAMPLE_SHAPES.get(str(dataset).lower())
    for one in (m for m in str(spec).split(",") if m):
        model = load_model(one)
        _shared.check_finite_model(model, one)
        if shape is not None:
            try:
                fit_input(model, shape)
            except ValueError as e:
                msg = str(e).partition(": ")[2] or str(e)
                raise ValueError(f"model: {one} does not accept {dataset} samples of shape {shape}: "
                                 f"{msg.split('; give')[0]}") from None


# ------------------------------------------------------------------ reproduce
def run_reproduce(args) -> int:
    from memcim.experiments.reproduce import FAILED, reproduce

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = reproduce(args.paper, args.out, quick=args.quick, seed=args.seed, resume=args.resume,
                       report_only=args.report_only, progress=sys.stderr.isatty(), log=log)
    doc = json.loads((Path(args.out) / "reproduce.json").read_text())
    failed = [s["key"] for s in doc.get("steps", []) if s.get("status") == FAILED]
    print(f"wrote {report}" + (f" ({len(failed)} step(s) failed: {', '.join(failed)}; see the report)"
                               if failed else ""))
    return 1 if failed else 0
