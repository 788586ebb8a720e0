"""One-command reproduction of every paper's headline figures and tables.

Each paper is a :class:`Section`: a list of memcim CLI invocations (each writes its JSON and PNG
into its own folder of the report) and a ``summarize`` function that reads those JSON files and
returns rows ``(quantity, paper, memcim, note)``. :func:`reproduce` runs the sections, keeps going
when one step fails (the failure is written into the report), and writes ``REPORT.md`` with every
PNG beside the table of measured figures against the paper's.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from memcim.io import provenance, write_json

Row = tuple[str, str, str, str]


@dataclass
class Step:
    """One CLI invocation; ``quick=None`` skips the step under ``--quick`` (too slow for minutes)."""

    name: str
    quick: list[str] | None
    full: list[str]

    @property
    def folder(self) -> str:
        """The step's folder in the report: the command, plus its first positional argument."""
        first = (self.full or self.quick or [""])[0]
        return self.name if not first or first.startswith("-") else f"{self.name}-{first}"


@dataclass
class Section:
    key: str
    title: str
    paper: str
    steps: list[Step]
    summarize: Callable[[Path], list[Row]] = field(default=lambda d: [])


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _fmt(v, spec=".3g") -> str:
    return "n/a" if v is None else format(v, spec)


# ---------------------------------------------------------------- paper 000: low rank
def _sum_000(d: Path) -> list[Row]:
    rows: list[Row] = []
    f2 = _load(d / "lowrank-fig2" / "lowrank_fig2.json")
    if f2:
        rows.append(("Fig. 2: error vs rank", "U-shape, interior optimal rank",
                     f"optimal k = {f2.get('k_opt')} (r1 = {f2.get('r1_opt')}, r2 = {f2.get('r2_opt')})",
                     "closed form and Monte Carlo"))
        rows.append(("error at the optimum / baseline", "< 1 (low rank wins)", _fmt(f2.get("best_normalized"), ".3f"),
                     f"improvement x{_fmt(f2.get('improvement'), '.2f')}"))
        rows.append(("closed form vs Monte Carlo", "(not reported)", f"max rel. diff {_fmt(f2.get('max_abs_rel_diff'), '.2%')}",
                     f"{_get(f2, 'config', 'trials', default='?')} trials per k"))
    mlp = _load(d / "lowrank-mlp" / "lowrank_mlp.json")
    if mlp:
        rows.append(("MNIST MLP accuracy vs device budget", "(beyond the paper)", "see lowrank_mlp.png", ""))
    return rows


# ---------------------------------------------------------------- papers 001-003
def _summary_rows(d: Path, paper: dict[str, str]) -> list[Row]:
    """Rows from the ``summary`` dict that each step's JSON carries, beside the paper's values
    (keyed ``"<figure>:<key>"`` for one figure, or ``"<key>"`` for every figure)."""
    rows: list[Row] = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir()) if d.exists() else []:
        for f in sorted(sub.glob("*.json")):
            s = (_load(f) or {}).get("summary")
            if not isinstance(s, dict):
                continue
            for k, v in s.items():
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    ref = paper.get(f"{f.stem}:{k}", paper.get(k, ""))
                    rows.append((f"{f.stem}: {k}", ref, v if isinstance(v, str) else _fmt(v), ""))
    return rows


_PAPER_001 = {"speedup": "85x (GPU)", "speedup_vs_mc": "85x (GPU)"}


def _sum_001(d: Path) -> list[Row]:
    """Fig. 2: prediction against Monte Carlo where the accuracy drop is small, per model."""
    rows: list[Row] = []
    f2 = _load(d / "memse-fig-fig2" / "memse_fig2.json")
    for model in sorted({r.get("model") for r in (f2 or {}).get("rows", [])}):
        rs = [r for r in f2["rows"] if r.get("model") == model and r.get("rel_err_t2") is not None
              and r.get("clean_accuracy", 0) - r.get("mc_accuracy", 0) < 0.05]
        if rs:
            worst = max(abs(r["rel_err_t2"]) for r in rs)
            rows.append((f"Fig. 2 {model}: predicted vs Monte Carlo mean MSE (accuracy drop < 5 points)",
                         "close agreement", f"largest abs. rel. error {worst:.1%}",
                         f"{len(rs)} sigma values, {f2['config'].get('trials')} chips each"))
    f3 = _load(d / "memse-fig-fig3" / "memse_fig3.json")
    for model in sorted({r.get("model") for r in (f3 or {}).get("rows", []) if r.get("model")}):
        rs = [r for r in f3["rows"] if r.get("model") == model and r.get("rel_err_max") is not None
              and r.get("clean_accuracy", 0) - r.get("mc_accuracy", 0) < 0.05]
        if rs:
            worst = max(abs(r["rel_err_max"]) for r in rs)
            worst_mean = max(abs(r["rel_err_mean"]) for r in rs)
            rows.append((f"Fig. 3 {model}: predicted vs Monte Carlo max MSE (accuracy drop < 5 points)",
                         "close agreement", f"largest abs. rel. error {worst:.1%} (mean MSE: {worst_mean:.1%})",
                         f"{len(rs)} (sigma, G_max) points, {f3['config'].get('trials')} chips each; the Monte "
                         "Carlo max over outputs is biased upward when chips are few"))
    f4 = _load(d / "memse-fig-fig4" / "memse_fig4.json")
    for gran, v in sorted(((f4 or {}).get("summary") or {}).items()):
        if v.get("ga_over_structured_mse_median") is not None:
            rows.append((f"Fig. 4 {gran} G_max: GA max-MSE / structured max-MSE (median over budgets)",
                         "GA only", _fmt(v["ga_over_structured_mse_median"]),
                         f"structured {v['structured_wall_s_total']:.1f} s vs GA {v['ga_wall_s_total']:.1f} s in total; "
                         f"GA ({(f4.get('config') or {}).get('pop_size')} x {(f4.get('config') or {}).get('n_gen')}) within "
                         f"1 % in {v['ga_reached_structured_within_1pct']}/{v['budgets']} budgets"))
    return rows + _summary_rows(d, _PAPER_001)
_PAPER_002 = {"fig9a:accuracy_software": "0.984", "fig9a:accuracy_representable": "0.983",
              "fig9a:accuracy_dpe": "0.963", "fig10a:accuracy_software": "0.984",
              "error_ratio_dpe_over_representable": "4-9x"}
_PAPER_003 = {"naive_loss_points": "6.74", "both_gap_points": "0.89", "mse_reduction_both_vs_naive": "0.86",
              "energy_gain_both_vs_naive": "0.11", "adc3_both_accuracy": "0.938"}


SECTIONS: dict[str, Section] = {
    "000": Section("000", "Low-rank approximate computation with memristors",
                   "000_d5a632188df716b1.txt", [
                       Step("lowrank-fig2", ["--size", "128", "--trials", "300", "--points", "8"], []),
                       Step("lowrank-hw", ["--size", "32", "--ranks", "2", "8", "--trials", "40"], []),
                       Step("lowrank-mlp", ["--n-test", "1000", "--trials", "2", "--budgets", "1", "2"], []),
                   ], _sum_000),
    "001": Section("001", "MemSE: fast MSE prediction for noisy memristor-based DNN accelerators",
                   "001_64689ebc712406a7.txt", [
                       Step("memse-fig", ["fig2", "--quick"], ["fig2"]),
                       Step("memse-fig", ["fig3", "--quick"], ["fig3"]),
                       Step("memse-fig", ["fig4", "--quick"], ["fig4"]),
                   ], _sum_001),
    "002": Section("002", "Representable matrices: IR-drop-aware mapping",
                   "002_f0b6f2aca12a328f.txt", [
                       Step("irdrop-fig", ["fig4", "--quick"], ["fig4"]),
                       Step("irdrop-fig", ["fig7", "--quick"], ["fig7"]),
                       Step("irdrop-fig", ["fig9a", "--quick"], ["fig9a"]),
                       Step("irdrop-fig", ["fig9b", "--quick"], ["fig9b"]),
                       Step("irdrop-fig", ["fig10a", "--quick"], ["fig10a"]),
                   ], lambda d: _summary_rows(d, _PAPER_002)),
    "003": Section("003", "Mathematical optimization of analog compute-in-memory",
                   "003_c92aaa23b8ee13b1.txt", [
                       Step("experiment", ["convex-cim", "--quick"], ["convex-cim"]),
                   ], lambda d: _summary_rows(d, _PAPER_003)),
}


def _run_step(step: Step, out: Path, quick: bool, seed: int) -> dict:
    from memcim.cli import main

    if quick and step.quick is None:
        return {"step": step.folder, "command": f"memcim {step.name} {' '.join(step.full)}", "rc": None,
                "wall_s": 0.0, "message": "skipped in --quick mode; the full `memcim reproduce` runs it"}

    args = [step.name] + (step.quick if quick else step.full) + ["--out", str(out), "--seed", str(seed)]
    buf_out, buf_err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            rc = main(args)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    except Exception as e:  # noqa: BLE001 - a failing step is recorded, the report goes on
        rc = 1
        buf_err.write(f"{type(e).__name__}: {e}")
    wall = time.perf_counter() - t0
    (out / "stdout.txt").write_text(buf_out.getvalue())
    (out / "stderr.txt").write_text(buf_err.getvalue())
    return {"step": step.folder, "command": "memcim " + " ".join(args), "rc": rc, "wall_s": wall,
            "message": (buf_err.getvalue().strip().splitlines() or [""])[-1] if rc else ""}


def reproduce(which: str = "all", out: str | Path = "results/report", quick: bool = False, seed: int = 0,
              progress: bool = True, report_only: bool = False) -> Path:
    """Run the reproduction of ``which`` ("all" or a paper key) and write ``out/REPORT.md``.

    ``report_only`` rewrites the report from the step records of an earlier run in ``out``
    (``reproduce.json``) without running anything.
    """
    keys = list(SECTIONS) if which == "all" else [which]
    for k in keys:
        if k not in SECTIONS:
            raise ValueError(f"paper: {k!r} is not allowed; choose all, {', '.join(SECTIONS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {"which": which, "quick": quick, "seed": seed, "provenance": provenance(seed=seed), "steps": []}
    earlier = {}
    if report_only:
        old = _load(out / "reproduce.json")
        if not old:
            raise ValueError(f"--report-only: no reproduce.json from an earlier run in {out}")
        earlier = {(r["paper"], r["step"]): r for r in old.get("steps", [])}
        log.update({k: old[k] for k in ("quick", "seed", "provenance") if k in old})
        quick, seed = log["quick"], log["seed"]
    lines = [f"# memcim reproduction report ({'quick' if quick else 'full'})", "",
             f"Made by `memcim reproduce {which}{' --quick' if quick else ''} --out {out}` "
             f"(memcim {log['provenance']['memcim_version']}, commit {log['provenance']['git_commit']}, seed {seed}).",
             "Each measured figure stands beside the paper's; *n/a* marks a value the step did not produce.", ""]
    from tqdm import tqdm

    todo = [(k, s) for k in keys for s in SECTIONS[k].steps]
    bar = tqdm(total=len(todo), desc="reproduce", disable=not progress, unit="step")
    for k in keys:
        sec = SECTIONS[k]
        d = out / k
        d.mkdir(exist_ok=True)
        lines += [f"## Paper {k}: {sec.title}", "", f"Source: `shared/papers/{sec.paper}`.", ""]
        for step in sec.steps:
            bar.set_postfix_str(f"{k} {step.name}")
            sd = d / step.folder
            sd.mkdir(exist_ok=True)
            if report_only:
                rec = earlier.get((k, step.folder)) or earlier.get((k, step.name))
                if rec is None:
                    bar.update(1)
                    continue
                rec = {kk: v for kk, v in rec.items() if kk != "paper"}
            else:
                rec = _run_step(step, sd, quick, seed)
            log["steps"].append({"paper": k, **rec})
            write_json(out / "reproduce.json", log)  # an interrupted run keeps what it finished
            bar.update(1)
            if rec["rc"] is None:
                lines += [f"### `{step.folder}`: skipped ({rec['message']})", "", f"    {rec['command']}", ""]
                continue
            status = "ok" if rec["rc"] == 0 else f"**failed** (exit {rec['rc']}: {rec['message']})"
            lines += [f"### `{step.folder}`: {status}, {rec['wall_s']:.1f} s", "", f"    {rec['command']}", ""]
            for png in sorted(sd.glob("*.png")):
                lines += [f"![{step.folder}: {png.stem}]({png.relative_to(out).as_posix()})", ""]
        rows = sec.summarize(d)
        if rows:
            lines += ["| quantity | paper | memcim | note |", "| --- | --- | --- | --- |"]
            lines += [f"| {q} | {p} | {m} | {n} |" for q, p, m, n in rows]
            lines.append("")
    bar.close()
    report = out / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    return report
