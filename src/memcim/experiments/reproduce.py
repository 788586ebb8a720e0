"""One-command reproduction of every paper's headline figures and tables, from the registry.

Every step is a registered paper figure (:mod:`memcim.registry`, keys like ``"002/fig9a"``): it
is called directly (no command line is parsed, no printed output read back), its result saved as
``<out>/<paper>/<name>.json`` and ``.png`` by :func:`memcim.registry.save`, and its headline
numbers (the entry's ``summary``) set beside the paper's (the entry's ``reference``) in
``<out>/REPORT.md``.

* A failing step is recorded in the report (its traceback in ``<name>.error.txt``); the run goes on.
* ``resume=True`` skips the steps whose complete JSON is already in ``out`` (same quick mode and seed).
* An interrupt (``KeyboardInterrupt``) writes ``REPORT.md`` with the steps not run marked as such,
  then propagates.
* ``report_only=True`` runs nothing: it rewrites ``REPORT.md`` from what ``out`` holds; every step
  without a result is marked *not run*.
* ``log(line)`` receives one line when a step starts and one when it ends (with its elapsed
  time); ``progress=True`` adds a tqdm bar over the steps. The library itself prints nothing.
"""
from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from memcim import registry
from memcim.io import provenance, write_json

#: paper key -> (title, source file under shared/papers).
PAPERS = {
    "000": ("Low-rank approximate computation with memristors", "000_d5a632188df716b1.txt"),
    "001": ("MemSE: fast MSE prediction for noisy memristor-based DNN accelerators", "001_64689ebc712406a7.txt"),
    "002": ("Representable matrices: IR-drop-aware mapping", "002_f0b6f2aca12a328f.txt"),
    "003": ("Mathematical optimization of analog compute-in-memory", "003_c92aaa23b8ee13b1.txt"),
}

#: statuses of a step in the report
OK, RESUMED, FAILED, INTERRUPTED, NOT_RUN = "ok", "kept from an earlier run", "failed", "interrupted", "not run"


def steps(which: str = "all") -> list[str]:
    """The registry keys ``which`` (``"all"`` or a paper key) reproduces, in order."""
    papers = list(PAPERS) if which == "all" else [which]
    for p in papers:
        if p not in PAPERS:
            raise ValueError(f"paper: {p!r} is not allowed; choose all, {', '.join(PAPERS)}")
    return [k for p in papers for k in registry.keys(p)]


def _load(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return format(v, ".4g") if isinstance(v, float) else str(v)


def step_params(entry: registry.Entry, *, quick: bool, seed: int, out: Path, progress: bool = False,
                log: Callable[[str], None] | None = None) -> dict:
    """The parameters reproduce gives ``entry``: its quick ones, the seed, and the hooks it takes
    (``progress``; ``log``; ``checkpoint``, which saves the partial result into ``out``)."""
    takes = entry.parameters()
    extra: dict = {}
    if "seed" in takes:
        extra["seed"] = seed
    if "progress" in takes:
        extra["progress"] = progress
    if "log" in takes and log is not None:
        extra["log"] = lambda line: log(f"    {line}")
    kw = registry.params_for(entry, quick=quick, **extra)
    if "checkpoint" in takes:
        shown = dict(kw)

        def checkpoint(partial):
            registry.write_atomic(out / f"{entry.name}.json",
                                  registry.record(entry, partial, quick=quick, params=shown, complete=False))
        kw["checkpoint"] = checkpoint
    return kw


def _command(key: str, quick: bool, seed: int, out: Path) -> str:
    return f"memcim paper run {key}{' --quick' if quick else ''} --seed {seed} --out {out}"


def reproduce(which: str = "all", out: str | Path = "results/report", *, quick: bool = False, seed: int = 0,
              resume: bool = False, report_only: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None) -> Path:
    """Run the reproduction of ``which`` (``"all"`` or a paper key) and write ``out/REPORT.md``.

    Returns the report's path. See the module docstring for ``resume``, ``report_only``, ``log``
    and ``progress``; a ``KeyboardInterrupt`` writes the report, then propagates.
    """
    from memcim import validate

    seed = validate.seed(seed)
    keys = steps(which)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda line: None)
    old = _load(out / "reproduce.json") or {}
    earlier = {r.get("key"): r for r in old.get("steps", []) if isinstance(r, dict)}
    if report_only and old:
        quick, seed = bool(old.get("quick", quick)), int(old.get("seed", seed))
    doc = {"which": which, "quick": quick, "seed": seed, "provenance": provenance(seed=seed), "steps": []}
    records: dict[str, dict] = {}

    def finish(interrupted: bool = False) -> Path:
        doc["steps"] = [records[k] for k in keys if k in records]
        write_json(out / "reproduce.json", doc)
        return write_report(out, which, keys, records, quick=quick, seed=seed, prov=doc["provenance"],
                            interrupted=interrupted)

    if report_only:
        for key in keys:
            entry = registry.get(key)
            if registry.is_complete(entry, out / entry.paper):
                rec = dict(earlier.get(key) or {"key": key, "status": OK, "wall_s": None, "message": ""})
                if rec.get("status") != FAILED:
                    rec["status"] = rec.get("status") if rec.get("status") in (OK, RESUMED) else OK
                records[key] = rec
            elif key in earlier and earlier[key].get("status") == FAILED:
                records[key] = earlier[key]
            else:
                records[key] = {"key": key, "status": NOT_RUN, "wall_s": None, "message": ""}
        return finish()

    from tqdm import tqdm

    bar = tqdm(total=len(keys), desc="reproduce", unit="step", disable=not progress)
    t_all = time.perf_counter()
    try:
        for i, key in enumerate(keys, 1):
            entry = registry.get(key)
            d = out / entry.paper
            bar.set_postfix_str(key)
            if resume and registry.is_complete(entry, d, quick=quick, seed=seed):
                prev = earlier.get(key) or {}
                records[key] = {"key": key, "status": RESUMED, "wall_s": prev.get("wall_s"), "message": ""}
                say(f"[{i}/{len(keys)}] {key}: complete in {d}, skipped (--resume)")
                bar.update(1)
                continue
            say(f"[{i}/{len(keys)}] {key}: started ({entry.title})")
            records[key] = {"key": key, "status": INTERRUPTED, "wall_s": None, "message": "interrupted"}
            t0 = time.perf_counter()
            try:
                kw = step_params(entry, quick=quick, seed=seed, out=d, progress=progress, log=log)
                result = registry.record(entry, entry.run(**kw), quick=quick, params=kw)
                registry.save(entry, result, d)
                rec = {"key": key, "status": OK, "wall_s": time.perf_counter() - t0, "message": ""}
            except KeyboardInterrupt:
                records[key]["wall_s"] = time.perf_counter() - t0
                raise
            except Exception as e:  # noqa: BLE001 - a failing step is recorded, the run goes on
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{entry.name}.error.txt").write_text(traceback.format_exc())
                msg = " ".join(f"{type(e).__name__}: {e}".split())
                rec = {"key": key, "status": FAILED, "wall_s": time.perf_counter() - t0, "message": msg}
            records[key] = rec
            say(f"[{i}/{len(keys)}] {key}: {rec['status']} in {rec['wall_s']:.1f} s"
                + (f" ({rec['message']})" if rec["message"] else "")
                + f"; {time.perf_counter() - t_all:.0f} s so far")
            bar.update(1)
            doc["steps"] = [records[k] for k in keys if k in records]
            write_json(out / "reproduce.json", doc)  # an interrupted run keeps what it finished
    except KeyboardInterrupt:
        bar.close()
        for key in keys:
            records.setdefault(key, {"key": key, "status": NOT_RUN, "wall_s": None, "message": "interrupted before"})
        report = finish(interrupted=True)
        say(f"interrupted: wrote {report} (steps not run are marked; --resume continues)")
        raise
    bar.close()
    return finish()


def _rows(entry: registry.Entry, result: dict) -> list[tuple[str, str, str]]:
    try:
        head = entry.headline(result)
    except Exception as e:  # noqa: BLE001 - a summary that cannot be read is a note, not a crash
        return [("(summary)", "", f"unavailable: {type(e).__name__}: {e}")]
    rows = []
    for k, v in head.items():
        if isinstance(v, (dict, list)):
            continue
        rows.append((k, str(entry.reference.get(k, "")), _fmt(v)))
    for k, ref in entry.reference.items():
        if k not in head:
            rows.append((k, str(ref), "n/a"))
    return rows


def write_report(out: Path, which: str, keys: list[str], records: dict[str, dict], *, quick: bool, seed: int,
                 prov: dict, interrupted: bool = False) -> Path:
    """Write ``out/REPORT.md``: per paper, each step's status, command, PNG and headline numbers
    beside the paper's; steps without a result say *not run*."""
    not_run = [k for k in keys if records.get(k, {}).get("status") in (NOT_RUN, INTERRUPTED)]
    failed = [k for k in keys if records.get(k, {}).get("status") == FAILED]
    lines = [f"# memcim reproduction report ({'quick' if quick else 'full'})", "",
             (f"Made by `memcim paper reproduce {which}{' --quick' if quick else ''} --seed {seed} --out {out}` "
              f"(memcim {prov.get('memcim_version')}, commit {prov.get('git_commit')}, seed {seed})."),
             "Each measured figure stands beside the paper's; *n/a* marks a value the step did not produce.", ""]
    if interrupted:
        lines += [(f"**Interrupted**: {len(not_run)} step(s) not run ({', '.join(not_run)}); "
                   f"`memcim paper reproduce {which}{' --quick' if quick else ''} --resume --out {out}` continues."), ""]
    elif not_run:
        lines += [f"{len(not_run)} step(s) not run: {', '.join(not_run)}.", ""]
    if failed:
        lines += [f"{len(failed)} step(s) failed: {', '.join(failed)}.", ""]
    lines += ["| step | status | time |", "| --- | --- | --- |"]
    for k in keys:
        r = records.get(k, {})
        w = r.get("wall_s")
        lines.append(f"| `{k}` | {r.get('status', NOT_RUN)} | {'' if w is None else f'{w:.1f} s'} |")
    lines.append("")
    for paper in dict.fromkeys(registry.get(k).paper for k in keys):
        title, source = PAPERS.get(paper, (paper, ""))
        lines += [f"## Paper {paper}: {title}", "", f"Source: `shared/papers/{source}`.", ""]
        for key in [k for k in keys if registry.get(k).paper == paper]:
            entry = registry.get(key)
            rec = records.get(key) or {"status": NOT_RUN}
            status, w = rec.get("status", NOT_RUN), rec.get("wall_s")
            head = f"### `{key}`: {entry.title}"
            if status in (NOT_RUN, INTERRUPTED):
                lines += [head, "", f"*{status}*" + (f" ({rec['message']})" if rec.get("message") else "") + ".",
                          "", f"    {_command(key, quick, seed, out / paper)}", ""]
                continue
            if status == FAILED:
                lines += [head, "", (f"**failed** after {w or 0:.1f} s: {rec.get('message', '')} "
                                     f"(traceback: `{paper}/{entry.name}.error.txt`)."), "",
                          f"    {_command(key, quick, seed, out / paper)}", ""]
                continue
            lines += [head, "", f"{status}" + (f", {w:.1f} s" if w is not None else "") + ".", "",
                      f"    {_command(key, quick, seed, out / paper)}", ""]
            png = out / paper / f"{entry.name}.png"
            if png.is_file():
                lines += [f"![{key}]({png.relative_to(out).as_posix()})", ""]
            result = _load(out / paper / f"{entry.name}.json")
            rows = _rows(entry, result) if result else []
            if rows:
                lines += ["| quantity | paper | memcim |", "| --- | --- | --- |"]
                cell = lambda t: str(t).replace("|", "\\|")  # a | inside a cell would end it
                lines += [f"| {cell(q)} | {cell(p)} | {cell(m)} |" for q, p, m in rows]
                lines.append("")
    report = out / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    return report
