"""MemSE benchmark: analytic MSE prediction vs the Monte Carlo needed for the same accuracy.

Set-up (paper 001, Sec. V-A): the small CNN (mnist-cnn-small reference model: 2-4-8-16-16
filters, MNIST zero-padded to 32x32), batch of 64 test inputs, sigma = 0.01 S, N = 128. The Monte
Carlo peer is the Monte Carlo of record: chips through memcim's hardware simulator (memcim.nn analog
layers on memcim.simulate chips, float32, the one chips loop memcim.nn.evaluate.chip_outputs). The
number of chips needed to be within 2 % of the true MSE 98 % of the time is derived from the
per-chip MSE spread of a pilot run (500 chips): T = (z_0.99 * CV / 0.02)^2. Then T chips are run, in
8 chunks, each chunk followed by timings of the closed form (both sides in process CPU time, one thread,
interleaved so they see the same machine load), and the ratio is reported in the same run:

* ``speedup_standalone``: MC CPU time for T chips / closed form's median time, the closed form mapping
  every layer itself (as a first call does) and computing the noise-free reference output;
* ``speedup_standalone_old``: the same for the closed form at revision OLD_REVISION (its moments.py and
  predict.py loaded from git, see bench_predict_revisions.py), timed in the same chunks;
* ``speedup_shared_mapping``: the same with the closed form given the plans of an earlier call
  (``plans=``): the mapping is counted for neither side (the MC maps once per call of
  monte_carlo_simulator, i.e. once per chunk of hundreds of chips, < 0.1 % of its time).

Also: accuracy of each covariance mode against that MC, the prediction's state memory, a cProfile of the
default prediction, the torch calls one prediction makes (``torch_calls``: every call through torch's function
dispatch, tensor methods and operators included, counted with a TorchFunctionMode), and its time vs network
width and depth. Single thread for both sides.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_memse.py [--quick]`` (writes bench/results/bench_memse.json).
"""
from __future__ import annotations

import cProfile
import io
import math
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from memcim.analysis.memse_sim import monte_carlo_simulator, trials_needed
from memcim.analysis.moments import parse_model, predict_mse, propagate
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.loading import load_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_predict_revisions import installed, load_revision  # noqa: E402

#: the closed form before issue 17 item 3's third pass (b8bbaa5: the second pass), timed against the same Monte
#: Carlo in the same run
OLD_REVISION = "b8bbaa5"


def cpu_time(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def best_time(fn, reps=5):
    ts = []
    for _ in range(reps):
        t, out = cpu_time(fn)
        ts.append(t)
    return min(ts), out


def state_bytes(layers, x, **kw):
    _, states = propagate(layers, x, return_all=True, **kw)
    peak = 0
    for s in states:
        n = sum(t.numel() * t.element_size() for t in (s.mean, s.var, s.cov, s.factors, s.local,
                                                        getattr(s, "resid", None)) if t is not None)
        peak = max(peak, n)
    return peak


def torch_calls(fn) -> dict:
    """The torch calls ``fn()`` makes (functions, tensor methods, operators and attribute reads that go through
    torch's function dispatch), by name: the per-call overhead the small tensors of a prediction pay."""
    import collections

    from torch.overrides import TorchFunctionMode

    class _Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.n = collections.Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.n[getattr(func, "__name__", str(func))] += 1
            return func(*args, **(kwargs or {}))

    with _Count() as c:
        fn()
    attrs = sum(v for k, v in c.n.items() if k in ("__get__", "__set__"))
    return {"total": int(sum(c.n.values())), "attribute_reads": int(attrs),
            "top": {k: int(v) for k, v in c.n.most_common(12)}}


def profile_rows(fn, reps: int = 5, top: int = 15) -> list:
    """cProfile of ``reps`` calls: the ``top`` functions by own time, with their share of the total."""
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(reps):
        fn()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    total = st.total_tt
    rows = sorted(((v[2], v[3], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in st.stats.items()), reverse=True)
    return [{"function": name, "tottime_share": tt / total, "cumtime_share": ct / total} for tt, ct, name in rows[:top]]


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seed = 0
    sigma, levels, gmax = 0.01, 128, 3.0
    net = load_model("mnist-cnn-small").eval()
    ds = load_dataset("mnist", "test", limit=64)
    x, y = ds.x, ds.y
    res = {"config": {"model": "mnist-cnn-small", "batch": 64, "sigma": sigma, "gmax": gmax, "levels": levels,
                      "threads": 1}, "provenance": provenance(seed=seed)}
    # --- Monte Carlo: a pilot for the per-chip spread, then the T chips it asks for, interleaved with the closed form
    pilot = monte_carlo_simulator(net, x, sigma=sigma, gmax=gmax, levels=levels, trials=200 if quick else 500,
                                  seed=seed, labels=y, progress=False)
    cv = float(pilot.trial_mse.std(ddof=1) / pilot.trial_mse.mean())
    t_need = trials_needed(pilot.trial_mse, 0.02, 0.98)
    layers32, x32 = parse_model(net, torch.float32), x.to(torch.float32)
    kw = dict(sigma=sigma, gmax=gmax, levels=levels, power=False, dtype=torch.float32)
    p_def = predict_mse(layers32, x32, **kw)                      # warm-up; its plans serve the shared-mapping timing
    plans = p_def.plans
    old = load_revision(OLD_REVISION)
    with installed(old):
        layers_old = old["moments"].parse_model(net, torch.float32)
        p_old = old["moments"].predict_mse(layers_old, x32, **kw)

    def predict_old():
        with installed(old):
            return old["moments"].predict_mse(layers_old, x32, **kw)
    chunks = 4 if quick else 8
    per = math.ceil(t_need / chunks)
    mc_cpu, trial_mse, accs = 0.0, [], []
    t_alone, t_shared, t_old = [], [], []
    for c in range(chunks):
        dt_mc, mc = cpu_time(lambda: monte_carlo_simulator(net, x, sigma=sigma, gmax=gmax, levels=levels, trials=per,
                                                           seed=seed + 2 + 1000 * c, labels=y, progress=False))
        mc_cpu += dt_mc
        trial_mse.extend(mc.trial_mse.tolist())
        accs.extend(mc.accuracy.tolist())
        for _ in range(2):
            t_alone.append(cpu_time(lambda: predict_mse(layers32, x32, **kw))[0])
            t_shared.append(cpu_time(lambda: predict_mse(layers32, x32, **kw, plans=plans))[0])
            t_old.append(cpu_time(predict_old)[0])
    tm = np.asarray(trial_mse)
    n_run = tm.size
    mc_s = mc_cpu * t_need / n_run                               # CPU time of exactly T chips
    mse_mc, se_mc = float(tm.mean()), float(tm.std(ddof=1) / math.sqrt(n_run))
    alone, shared, before = float(np.median(t_alone)), float(np.median(t_shared)), float(np.median(t_old))
    res["monte_carlo_simulator"] = {"pilot_chips": int(pilot.trial_mse.size), "per_chip_mse_cv": cv,
                                    "trials_needed_2pct_98pct": t_need, "chips_run": int(n_run),
                                    "cpu_s_per_chip": mc_cpu / n_run, "cpu_s_at_precision": mc_s,
                                    "mse_mean": mse_mc, "mse_mean_stderr": se_mc,
                                    "accuracy": float(np.mean(accs)),
                                    "clean_accuracy": float((net(x).argmax(1) == y).double().mean())}
    res["closed_form_vs_mc"] = {
        "predict_s_median_standalone": alone, "predict_s_median_shared_mapping": shared,
        "predict_s_min_standalone": float(min(t_alone)), "predict_s_min_shared_mapping": float(min(t_shared)),
        "speedup_standalone": mc_s / alone, "speedup_shared_mapping": mc_s / shared,
        "old_revision": OLD_REVISION, "predict_s_median_standalone_old": before, "speedup_standalone_old": mc_s / before,
        "mse_predicted_old": p_old.mse_mean,
        "predict_in_chips_standalone": alone / (mc_cpu / n_run),
        "mse_predicted": p_def.mse_mean, "rel_err_vs_mc": (p_def.mse_mean - mse_mc) / mse_mc,
        "z_vs_mc": (p_def.mse_mean - mse_mc) / se_mc,
        "includes": {"standalone": "closed form: mapping of every layer, moment propagation, reference output",
                     "shared_mapping": "closed form given the plans (plans=): propagation and reference output",
                     "mc": "T chips through the simulator (programming, reads), its reference output and one "
                           "mapping per chunk of %d chips" % per}}
    res["profile_default_prediction"] = profile_rows(lambda: predict_mse(layers32, x32, **kw))
    res["torch_calls"] = {"standalone": torch_calls(lambda: predict_mse(layers32, x32, **kw)),
                          "shared_mapping": torch_calls(lambda: predict_mse(layers32, x32, **kw, plans=plans))}
    # --- every covariance mode against the same Monte Carlo
    rows = []
    modes = [("lowrank", torch.float32, {}), ("lowrank", torch.float64, {}), ("diagonal", torch.float32, {}),
             ("lowrank", torch.float32, {"rank": 1}), ("lowrank", torch.float32, {"rank": 2}),
             ("lowrank", torch.float32, {"rank": 8})]
    if not quick:
        modes.append(("exact", torch.float64, {}))
    mse_max_mc = None
    for mode, dt, extra in modes:
        layers = parse_model(net, dt)
        xd = x.to(dt)
        reps = 1 if mode == "exact" else 5
        t, p = best_time(lambda: predict_mse(layers, xd, sigma=sigma, gmax=gmax, levels=levels, cov=mode,
                                             power=False, dtype=dt, **extra), reps)
        mem = state_bytes(layers, xd, sigma=sigma, gmax=gmax, levels=levels, cov=mode, **extra) if mode != "exact" else None
        rows.append({"cov": mode, "dtype": str(dt).replace("torch.", ""), **extra, "cpu_s": t,
                     "speedup_vs_simulator_mc": mc_s / t,
                     "mse_mean": p.mse_mean, "mse_max": p.mse_max,
                     "rel_err_mean_vs_simulator_mc": (p.mse_mean - mse_mc) / mse_mc,
                     "z_vs_simulator_mc": (p.mse_mean - mse_mc) / se_mc, "state_peak_bytes": mem})
    res["prediction"] = rows
    # --- scaling with width and depth (random weights; time of the default prediction)
    scal = []
    xs = torch.rand(64, 1, 32, 32)
    for mult in ([1, 2] if quick else [1, 2, 4, 8]):
        ch = [2 * mult, 4 * mult, 8 * mult, 16 * mult, 16 * mult]
        layers_ = []
        prev = 1
        for c in ch:
            layers_ += [nn.Conv2d(prev, c, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2)]
            prev = c
        m = nn.Sequential(*layers_, nn.Flatten(), nn.Linear(prev, 10))
        L = parse_model(m, torch.float32)
        t, _ = best_time(lambda: predict_mse(L, xs, sigma=sigma, gmax=gmax, power=False, dtype=torch.float32), 3)
        tm, _ = best_time(lambda: monte_carlo_simulator(m, xs, sigma=sigma, gmax=gmax, trials=20, progress=False), 2)
        scal.append({"kind": "cnn width", "channel_multiplier": mult, "predict_s": t, "mc_s_per_trial": tm / 20,
                     "state_peak_bytes": state_bytes(L, xs, sigma=sigma, gmax=gmax)})
    xm = torch.rand(64, 256)
    for depth in ([1, 2, 4] if quick else [1, 2, 4, 8]):
        mods = []
        for _ in range(depth):
            mods += [nn.Linear(256, 256), nn.ReLU()]
        m = nn.Sequential(*mods, nn.Linear(256, 10))
        L = parse_model(m, torch.float32)
        t, _ = best_time(lambda: predict_mse(L, xm, sigma=sigma, gmax=gmax, power=False, dtype=torch.float32), 3)
        tm, _ = best_time(lambda: monte_carlo_simulator(m, xm, sigma=sigma, gmax=gmax, trials=20, progress=False), 2)
        scal.append({"kind": "mlp depth (width 256)", "hidden_layers": depth, "predict_s": t, "mc_s_per_trial": tm / 20,
                     "state_peak_bytes": state_bytes(L, xm, sigma=sigma, gmax=gmax)})
    res["scaling"] = scal
    out = Path(__file__).parent / "results" / "bench_memse.json"
    write_json(out, res)
    mc, cf = res["monte_carlo_simulator"], res["closed_form_vs_mc"]
    print(f"MC through the simulator: CV {cv:.3f} -> T = {t_need} chips for 2 %/98 %; {n_run} run, "
          f"{mc['cpu_s_per_chip'] * 1e3:.2f} ms/chip -> {mc_s:.2f} s at T; MSE {mse_mc:.4g} ± {se_mc:.2g}")
    print(f"closed form: standalone {alone * 1e3:.2f} ms -> {cf['speedup_standalone']:.0f}x; shared mapping "
          f"{shared * 1e3:.2f} ms -> {cf['speedup_shared_mapping']:.0f}x; MSE {p_def.mse_mean:.4g} "
          f"({100 * cf['rel_err_vs_mc']:+.2f} %, z = {cf['z_vs_mc']:+.2f}); before ({OLD_REVISION}) {before * 1e3:.2f} ms "
          f"-> {cf['speedup_standalone_old']:.0f}x")
    print(f"torch calls per prediction: standalone {res['torch_calls']['standalone']['total']}, shared mapping "
          f"{res['torch_calls']['shared_mapping']['total']}")
    for r in res["profile_default_prediction"][:10]:
        print(f"  {100 * r['tottime_share']:5.1f} %  {r['function']}")
    print(f"{'cov':9s} {'dtype':8s} {'extra':10s} {'cpu ms':>9s} {'vs sim':>8s} {'err mean':>9s} {'state MB':>8s}")
    for r in rows:
        ex = ",".join(f"{k}={r[k]}" for k in ("rank",) if k in r)
        mb = "-" if r["state_peak_bytes"] is None else f"{r['state_peak_bytes'] / 1e6:.1f}"
        print(f"{r['cov']:9s} {r['dtype']:8s} {ex:10s} {r['cpu_s'] * 1e3:9.1f} {r['speedup_vs_simulator_mc']:8.1f} "
              f"{100 * r['rel_err_mean_vs_simulator_mc']:8.1f}% {mb:>8s}")
    for s in scal:
        print(s)
    return res


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
