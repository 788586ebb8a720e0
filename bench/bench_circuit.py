"""Benchmark: the circuit solver -- realized-matrix time vs size against the replaced solver and ngspice,
ngspice agreement, the gradient fields, and the options measured before choosing the solver.

Run:  .venv/bin/python bench/bench_circuit.py [--sizes 128 256 512 1024] [--old-sizes 128 256]
      [--spice-size 32] [--spice-one 128]
Writes bench/results/circuit.json and prints a table. Mapping time and error against DPE: bench/bench_irdrop.py.

Peers, measured in the same run:
* ``old``: the solver this one replaced (up to commit 94f0a27^): SuperLU with its default COLAMD
  order on the natural node numbering, then n + m solves for the adjoint fields (its realized matrix
  came from them). Written out here as the peer; only at sizes where it is quick (it took 50-83 s at 512).
* ``ngspice`` (``ngspice -b`` on the netlist of :func:`memcim.hardware.circuit.to_spice`): the realized
  matrix of a ``--spice-size`` array (n operating points) and one operating point of a ``--spice-one``
  array; the agreement is the max relative difference.
* ``block-tridiagonal sweep`` (an option not chosen): rows as blocks, each an m x m dense Schur complement,
  n dense LU + solves; timed for a few steps at 512 and extrapolated.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.linalg as sl
import scipy.sparse.linalg as sla

from memcim.config import preset
from memcim.hardware.circuit import (Crossbar, _cell_stamp, _wire_matrix, ngspice_available, run_ngspice,
                                     single_blas, to_spice)
from memcim.io import provenance, write_json

#: paper 002's set-up (the irdrop preset): 2 kOhm .. 3 MOhm, 1 Ohm wires, 100 Ohm in/out
HW = preset("irdrop").without("dac", "adc")
G_MIN, G_MAX = HW.device.g_min, HW.device.g_max


def old_realized(g, w):
    """The replaced solver: COLAMD-ordered SuperLU on the natural numbering, m adjoint solves."""
    n, m = g.shape
    N = n * m
    Y = (_wire_matrix(n, m, w) + _cell_stamp(n, m, g)).tocsc()
    lu = sla.splu(Y)
    S = np.zeros((2 * N, m))
    S[N + (n - 1) * m + np.arange(m), np.arange(m)] = 1.0 / w.r_out
    with single_blas():
        Z = lu.solve(S).T.reshape(m, 2, n, m)
    return Z[:, 0, :, 0].T / w.r_in


CPU = {}


def timed(f, *a):
    """(result, wall seconds); the process CPU seconds of the call are left in ``CPU["last"]`` (on the
    shared machine the wall time follows other jobs' load, the CPU time what one free core takes)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = f(*a)
    CPU["last"] = time.process_time() - c0
    return out, time.perf_counter() - t0


def block_sweep_estimate(m: int, steps: int = 4) -> float:
    """Seconds of the block-tridiagonal dense sweep at m x m (n = m steps of LU + solve + product)."""
    rng = np.random.default_rng(0)
    A = rng.random((m, m)) + m * np.eye(m)
    B = rng.random((m, m))
    with single_blas():
        t0 = time.perf_counter()
        for _ in range(steps):
            X = sl.lu_solve(sl.lu_factor(A), B)
            _ = X @ B
    return (time.perf_counter() - t0) / steps * m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    ap.add_argument("--old-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--spice-size", type=int, default=32, help="realized matrix by ngspice (n operating points)")
    ap.add_argument("--spice-one", type=int, default=64, help="one ngspice operating point at this size (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    w = HW.wires
    res = {"provenance": provenance(seed=a.seed, load_average=os.getloadavg(), cpus=os.cpu_count()),
           "wires": w.to_dict(), "solve": [], "vs_ngspice": {}, "options": {}}
    print(f"{'size':>6} {'realized s':>11} {'(cpu s)':>8} {'old s':>8} {'old/new':>8} {'max rel diff':>13} "
          f"{'fields s':>9} {'old fields s':>13}")
    for n in a.sizes:
        g = rng.uniform(G_MIN, G_MAX, (n, n))
        G, t_new = timed(lambda: Crossbar(g, w).realized())
        row = {"size": n, "realized_s": t_new, "realized_cpu_s": CPU["last"]}
        if n in a.old_sizes:
            G0, t_old = timed(old_realized, g, w)
            row.update(old_realized_s=t_old, old_realized_cpu_s=CPU["last"], speedup_vs_old=t_old / t_new,
                       max_rel_diff_vs_old=float(np.abs(G - G0).max() / np.abs(G0).max()))
        if n <= 256:  # gradient fields: the march against n + m factor solves (the replaced path)
            cb = Crossbar(g, w)
            cb.realized()
            _, t_f = timed(cb.terminal_fields)
            row["fields_s"] = t_f
            if n <= 128:
                _, t_fo = timed(lambda: (cb.node_voltages(np.eye(n)), cb.adjoint_fields()))
                row.update(fields_by_solves_s=t_fo, fields_speedup=t_fo / t_f)
        res["solve"].append(row)
        print(f"{n:>6} {t_new:>11.3f} {row['realized_cpu_s']:>8.3f} {row.get('old_realized_s', float('nan')):>8.2f} "
              f"{row.get('speedup_vs_old', float('nan')):>8.1f} {row.get('max_rel_diff_vs_old', float('nan')):>13.1e} "
              f"{row.get('fields_s', float('nan')):>9.3f} {row.get('fields_by_solves_s', float('nan')):>13.3f}",
              flush=True)
    sizes = [r["size"] for r in res["solve"] if r["size"] >= 128]
    if len(sizes) >= 2:
        t = [r["realized_s"] for r in res["solve"] if r["size"] >= 128]
        res["growth_exponent"] = float(np.polyfit(np.log(sizes), np.log(t), 1)[0])
        print(f"realized time grows as n^{res['growth_exponent']:.2f} (sizes {sizes[0]}..{sizes[-1]})")
    res["options"]["block_tridiagonal_sweep_512_estimate_s"] = block_sweep_estimate(512)
    est = res["options"]["block_tridiagonal_sweep_512_estimate_s"]
    print(f"option not chosen: block-tridiagonal dense sweep at 512: ~{est:.1f} s (n^4; 16x that at 1024)")
    if ngspice_available():
        sp = {}
        n = a.spice_size
        g = rng.uniform(G_MIN, G_MAX, (n, n))
        G, t_ours = timed(lambda: Crossbar(g, w).realized())
        I, t_sp = run_ngspice(to_spice(g, wires=w, unit_inputs=True), n, timeout=3600)
        sp.update(size=n, memcim_realized_s=t_ours, ngspice_realized_s=t_sp, speedup=t_sp / t_ours,
                  max_rel_diff=float(np.abs(I - G).max() / np.abs(G).max()))
        print(f"realized {n}x{n}: memcim {t_ours:.4f} s, ngspice {t_sp:.2f} s ({sp['speedup']:.0f}x), "
              f"max rel diff {sp['max_rel_diff']:.1e}")
        if a.spice_one:
            n = a.spice_one
            g = rng.uniform(G_MIN, G_MAX, (n, n))
            v = rng.uniform(0, 0.2, n)
            G, t_ours = timed(lambda: Crossbar(g, w).realized())
            I, t_sp = run_ngspice(to_spice(g, v, w), n, timeout=3600)
            sp["one_input"] = {"size": n, "ngspice_one_input_s": t_sp, "memcim_realized_s": t_ours,
                               "ngspice_realized_estimate_s": t_sp * n, "speedup_estimate": t_sp * n / t_ours,
                               "max_rel_diff": float(np.abs(I[0] - v @ G).max() / np.abs(v @ G).max())}
            print(f"one operating point {n}x{n}: ngspice {t_sp:.1f} s (realized ~{t_sp * n:.0f} s), memcim realized "
                  f"{t_ours:.3f} s ({t_sp * n / t_ours:.0f}x), max rel diff {sp['one_input']['max_rel_diff']:.1e}")
        res["vs_ngspice"] = sp
    res["provenance"]["load_average_end"] = os.getloadavg()
    print("wrote", write_json(os.path.join(os.path.dirname(__file__), "results", "circuit.json"), res))


if __name__ == "__main__":
    main()
