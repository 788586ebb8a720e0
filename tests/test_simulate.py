"""Simulated MVM against independent computations."""
import math

import numpy as np
import pytest
import torch

from memcim.config import HardwareConfig, preset
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import program, simulate_mvm

rng = np.random.default_rng(1)
W = rng.standard_t(df=3, size=(300, 130))  # 3 x 3 tiles of 128 x 64 (differential) weights
X = rng.standard_normal((40, 300))


@pytest.mark.parametrize("scheme", ["differential", "offset"])
@pytest.mark.parametrize("scale", ["matrix", "column"])
def test_ideal_equals_xW(scheme, scale):
    hw = preset("ideal").replace(mapping={"scheme": scheme, "scale": scale})
    y = simulate_mvm(W, X, hw, trials=2, seed=0, dtype=torch.float64)
    assert y.shape == (2, 40, 130)
    assert np.allclose(y.numpy(), X @ W, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("scheme", ["differential", "offset"])
@pytest.mark.parametrize("rows, cols", [(128, 128), (64, 32), (300, 262)])
def test_noise_free_tiled_mvm_equals_realized_matrix(scheme, rows, cols):
    hw = HardwareConfig(device={"levels": 16}, array={"rows": rows, "cols": cols}, mapping={"scheme": scheme})
    m = map_matrix(W, hw)
    realized = m.realized().numpy()
    assert not np.allclose(realized, W)  # quantization changed the matrix ...
    y = program(m, seed=0, dtype=torch.float64).mvm(X)[0].numpy()
    assert np.allclose(y, X @ realized, rtol=1e-12, atol=1e-10)  # ... and the hardware computes exactly it
    # the realized matrix is the device-level reconstruction: at most half a level step per device, per side
    c = float(m.scale[0, 0])
    step = (hw.device.g_max - hw.device.g_min) / 15
    n_dev = 2 if scheme == "differential" else 1
    assert np.abs(realized - W).max() <= n_dev * step / 2 / c * (1 + 1e-9) + (step / 2 / c if scheme == "offset" else 0)


def test_tiles_each_have_their_own_adc():
    """A 2-row-tile matrix equals the digital sum of its two tiles simulated alone (same fixed FS)."""
    hw = HardwareConfig(adc={"enabled": True, "bits": 5, "fs_mode": "fixed", "full_scale": 0.05},
                        dac={"enabled": True, "bits": 6}, array={"rows": 150, "cols": 128})
    Wm = W[:, :60] / np.abs(W[:, :60]).max()
    x = X / np.abs(X).max()
    hw_fixed = hw.replace(dac={"x_range": 1.0})
    y = simulate_mvm(Wm, x, hw_fixed, dtype=torch.float64)[0].numpy()
    # same scale c in both tiles: pad each half with a weight of magnitude 1 in an unused column
    parts = []
    for sl in (slice(0, 150), slice(150, 300)):
        Wi = np.zeros((150, 61))
        Wi[:, :60] = Wm[sl]
        Wi[0, 60] = 1.0
        parts.append(simulate_mvm(Wi, x[:, sl], hw_fixed, dtype=torch.float64)[0].numpy()[:, :60])
    assert np.allclose(y, parts[0] + parts[1], rtol=1e-12, atol=1e-12)
    # and the ADC really quantized: the result differs from the exact product
    assert not np.allclose(y, x @ Wm, atol=1e-3)


def test_adc_max_full_scale_never_saturates():
    hw = HardwareConfig(adc={"enabled": True, "bits": 8, "fs_mode": "max", "saturate": True},
                        dac={"enabled": True, "bits": 8, "x_range": 1.0})
    m = map_matrix(W, hw)
    worst = np.sign(m.realized().numpy().T)[:, :300]  # the input that maximises each column
    y = program(m, dtype=torch.float64).mvm(worst)[0].numpy()
    exact = worst @ m.realized().numpy()
    step = (m.full_scale / (1e3 * 0.2 * m.scale)).max().item() / 127
    assert np.abs(y - exact).max() <= 3 * step / 2 * (1 + 1e-9)  # only rounding (3 row tiles), no clipping


def test_calibrated_full_scale_has_no_clipping_on_its_data_but_clips_beyond():
    hw = HardwareConfig(adc={"enabled": True, "bits": 10, "fs_mode": "calibrated", "granularity": "column"},
                        dac={"enabled": True, "bits": 10, "x_range": 4.0})
    m = map_matrix(W, hw, calib_inputs=X)
    y = program(m, dtype=torch.float64).mvm(X)[0].numpy()
    ref = X @ m.realized().numpy()
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel < 0.02
    y_big = program(m, dtype=torch.float64).mvm(4 * X)[0].numpy()
    assert np.abs(y_big).max() < 0.99 * np.abs(4 * X @ m.realized().numpy()).max()  # saturated


def _column_setup(**device):
    """One column of 128 devices, all weights 1: G+ = g_max, G- = g_min."""
    hw = HardwareConfig(device=device, array={"rows": 128, "cols": 2, "v_read": 0.3},
                        dac={"enabled": False, "x_range": 1.0})
    Wc = np.ones((128, 1))
    return hw, map_matrix(Wc, hw)


@pytest.mark.parametrize("which", ["thermal", "shot", "both"])
def test_read_noise_variance_matches_physics(which):
    dev = dict(thermal_noise=which in ("thermal", "both"), shot_noise=which in ("shot", "both"),
               temperature=350.0, bandwidth=2e9)
    hw, m = _column_setup(**dev)
    x = np.zeros((4000, 128))
    x[:, :64] = 1.0
    x[:, 64:96] = -0.5
    chip = program(m, seed=0, dtype=torch.float64)
    y = chip.mvm(x)[0, :, 0].numpy()
    # by hand: current noise variance per differential column, in amperes squared
    k, q = 1.380649e-23, 1.602176634e-19
    g_tot = 128 * (1e-4 + 1e-6)
    abs_i = (64 * 0.3 + 32 * 0.15) * (1e-4 + 1e-6)
    var_i = (4 * k * 350 * 2e9 * g_tot if dev["thermal_noise"] else 0) + (2 * q * 2e9 * abs_i if dev["shot_noise"] else 0)
    c = (1e-4 - 1e-6) / 1.0
    var_y = var_i / (0.3 * c) ** 2  # y = I / (v_read c) in weight units
    n = y.size
    assert abs(y.mean() - (64 - 16)) < 5 * math.sqrt(var_y / n)
    assert abs(y.var(ddof=1) / var_y - 1) < 5 * math.sqrt(2 / (n - 1))


def test_reads_draw_fresh_noise_and_replay_from_seed():
    hw = preset("generic")
    m = map_matrix(W, hw)
    a = program(m, seed=5)
    y1, y2 = a.mvm(X), a.mvm(X)
    assert not torch.equal(y1, y2)
    b = program(m, seed=5)
    assert torch.equal(b.mvm(X), y1) and torch.equal(b.mvm(X), y2)
    assert torch.equal(a.mvm(X, seed=11), a.mvm(X, seed=11))


def test_trials_leading_dimension_and_per_trial_inputs():
    m = map_matrix(W, preset("generic"))
    chip = program(m, seed=0, trials=3)
    assert chip.mvm(X).shape == (3, 40, 130)
    xt = np.stack([X, 2 * X, -X])
    assert chip.mvm(xt).shape == (3, 40, 130)


def test_monte_carlo_error_shrinks_with_less_noise():
    # g_min = 20 uS keeps every device > 10 sigma above 0 S, so the clipping at 0 S never acts
    base = HardwareConfig(device={"g_min": 2e-5, "prog_sigma_abs": 2e-6})
    low = HardwareConfig(device={"g_min": 2e-5, "prog_sigma_abs": 5e-7})
    e_hi = ((simulate_mvm(W, X, base, trials=8, dtype=torch.float64).numpy() - X @ W) ** 2).mean()
    e_lo = ((simulate_mvm(W, X, low, trials=8, dtype=torch.float64).numpy() - X @ W) ** 2).mean()
    # additive noise on G+ and G- independently: MSE = 2 sigma^2 / c^2 * sum_i x_i^2 (by hand)
    c = (1e-4 - 2e-5) / np.abs(W).max()
    pred = 2 * (2e-6 / c) ** 2 * (X ** 2).sum(axis=1).mean()
    assert abs(e_hi / pred - 1) < 0.1
    assert e_hi / e_lo == pytest.approx(16, rel=0.15)


@pytest.mark.parametrize("bad, match", [
    (np.ones((40, 299)), "x: shape"),
    (np.full((40, 300), np.nan), "NaN"),
    ("text", "expected a numpy array"),
])
def test_bad_inputs(bad, match):
    chip = program(map_matrix(W, preset("ideal")))
    with pytest.raises((ValueError, TypeError), match=match):
        chip.mvm(bad)


@pytest.mark.parametrize("bad, match", [
    (np.ones(5), "2-D"), (np.array([[np.inf, 1.0]]), "NaN or inf"), (np.zeros((0, 3)), "empty"),
])
def test_bad_matrices(bad, match):
    with pytest.raises(ValueError, match=match):
        map_matrix(bad, preset("ideal"))


def test_bad_program_arguments():
    m = map_matrix(W, preset("ideal"))
    with pytest.raises(ValueError, match="trials"):
        program(m, trials=0)
    with pytest.raises(ValueError, match="seed"):
        program(m, seed=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_statistics():  # pragma: no cover - runs only where a GPU exists
    hw = preset("ideal")
    y = simulate_mvm(W, X, hw, device="cuda", dtype=torch.float64)
    assert np.allclose(y.cpu().numpy(), X @ W)


def test_with_full_scale_after_programming_clips_at_the_new_scale():
    hw = HardwareConfig(adc={"enabled": True, "bits": 8, "fs_mode": "max"}, dac={"enabled": False, "x_range": 1.0})
    Wm = W[:100, :50] / np.abs(W[:100, :50]).max()
    x = np.clip(X[:, :100], -1, 1)
    chip = program(map_matrix(Wm, hw), dtype=torch.float64)
    fs = 0.01  # volts: far below the worst case
    old = chip
    chip = chip.with_full_scale(fs)               # a new chip: plans and chips are not patched
    assert torch.equal(chip.g_pos, old.g_pos) and not torch.equal(old.mapped.full_scale, chip.mapped.full_scale)
    c = (1e-4 - 1e-6)
    limit = fs / (hw.array.r_tia * hw.array.v_read * c)  # |y| <= FS in weight units, one row tile
    y = chip.mvm(x)[0].numpy()
    assert np.abs(y).max() == pytest.approx(limit, rel=1e-9)
    with pytest.raises(ValueError, match="full_scale"):
        chip.with_full_scale(-1.0)
    with pytest.raises(ValueError, match="full_scale"):
        chip.with_full_scale(np.ones(7))


def test_with_hardware_keeps_targets_and_refuses_what_changes_them():
    """Other converters give a new plan with the same targets (and a recalibrated ADC full scale);
    a change of window, wires or mapping would change the targets and is refused."""
    Wm = W[:60, :30]
    hw = preset("generic")
    plan = map_matrix(Wm, hw, calib_inputs=X[:, :60])
    new = plan.with_hardware(hw.set("adc.bits", 5), calib_inputs=X[:, :60])
    assert torch.equal(new.g_pos, plan.g_pos) and torch.equal(new.scale, plan.scale)
    fresh = map_matrix(Wm, hw.set("adc.bits", 5), calib_inputs=X[:, :60])
    assert torch.equal(new.full_scale, fresh.full_scale)
    assert plan.with_hardware(hw.set("adc.bits", 5), keep_full_scale=True).full_scale is not None
    for key, value in (("device.g_max", 5e-5), ("array.rows", 64), ("mapping.scale", "column")):
        with pytest.raises(ValueError, match="map the matrix again"):
            plan.with_hardware(hw.set(key, value))
    # a chip re-read under the new plan: the same devices, so the noise-free realized matrix is the same
    chip = program(plan, seed=0, dtype=torch.float64)
    assert torch.equal(chip.with_plan(new).realized(), chip.realized())


@pytest.mark.parametrize("case", ["generic", "batch_not_16", "offset", "thermal", "quiet", "trials_3d", "rtn"])
def test_blocked_read_equals_one_block_read(case):
    """A read runs block by block (chip, a few inputs, every row tile) with the noise drawn in the
    order of one draw for the whole read, (trials, batch, row tiles, columns): every value is
    independent of the block size, bit for bit."""
    g = preset("generic")
    hw, batch, trials = {"generic": (g, 608, 1), "batch_not_16": (g, 601, 1),
                         "offset": (g.replace(mapping={"scheme": "offset"}), 600, 2),
                         "thermal": (g.without("shot"), 600, 1), "quiet": (g.without("thermal", "shot"), 600, 2),
                         "trials_3d": (g, 300, 2), "rtn": (g.replace(device={"rtn_amplitude": 0.05}), 600, 1)}[case]
    w = np.random.default_rng(2).standard_normal((300, 200))
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((trials, batch, 300) if case == "trials_3d"
                                                                   else (batch, 300)))
    m = map_matrix(w, hw)
    blocked, one = program(m, seed=5, trials=trials), program(m, seed=5, trials=trials)
    blocked._BLOCK_ELEMS = 4096                              # many blocks (16 inputs each)
    one._BLOCK_ELEMS = 1 << 40                               # one block
    for _ in range(2):   # the generators stay in step
        assert torch.equal(blocked.mvm(x), one.mvm(x))


@pytest.mark.parametrize("scheme", ["differential", "offset"])
def test_read_noise_statistics_match_the_closed_form(scheme):
    """Thermal and shot noise of every tile, input and column, against the physics written out by
    hand from the chip's conductances (ADC off, so the read is linear in the noise): each output's
    mean and variance over 4,000 copies of 6 inputs, and the variance of a weighted sum of all
    outputs of a copy (independent noise per tile, input and column; offset: plus the reference
    column's noise, common to the outputs of its array). Tolerances: 4.5 sigma of the sample
    statistic (Bonferroni over the 780 outputs at 1e-3)."""
    hw = preset("generic").replace(adc={"enabled": False}, device={"bandwidth": 1e10},
                                   mapping={"scheme": scheme})
    w = np.random.default_rng(4).standard_normal((300, 130))
    x0 = np.random.default_rng(5).standard_normal((6, 300))
    x0[:, :20] = 0.0                                        # some rows not driven
    N = 4000
    chip = program(map_matrix(w, hw), seed=9, dtype=torch.float64)
    y = chip.mvm(np.tile(x0, (N, 1)))[0].numpy().reshape(N, 6, 130)
    # by hand: 8-bit DAC with each vector's own range, j = u @ G per tile over v_read
    m = chip.mapped
    nrt, R, op, Cw = m.n_row_tiles, m.tile_rows, m.out_pad, m.tile_cols
    xs = np.abs(x0).max(axis=1, keepdims=True)
    u = np.round(np.clip(x0 / xs, -1, 1) * 127) / 127
    u = np.pad(u, ((0, 0), (0, nrt * R - 300))).reshape(6, nrt, R).transpose(1, 0, 2)       # (nrt, 6, R)
    gp, gn = chip.g_pos[0].numpy(), chip.g_neg[0].numpy()
    gn_cols = gn if scheme == "differential" else np.repeat(gn, Cw, axis=-1)
    gs = gp + gn if scheme == "differential" else gp
    dev, v = hw.device, hw.array.v_read
    kT4, q2 = 4 * 1.380649e-23 * dev.temperature * dev.bandwidth, 2 * 1.602176634e-19 * dev.bandwidth
    var = (kT4 * gs.sum(1)[:, None, :] + q2 * v * np.einsum("tbr,trc->tbc", np.abs(u), gs)) / v ** 2   # (nrt, 6, op)
    c = m.scale.numpy()[:, None, :]                        # (nrt, 1, op)
    mean = (np.einsum("tbr,trc->tbc", u, gp - gn_cols) / c).sum(0) * xs
    vy = (var / c ** 2).sum(0) * xs ** 2
    if scheme == "offset":
        var_ref = (kT4 * gn.sum(1)[:, None, :] + q2 * v * np.einsum("tbr,trk->tbk", np.abs(u), gn)) / v ** 2
        vy += (np.repeat(var_ref, Cw, axis=-1) / c ** 2).sum(0) * xs ** 2
    mean, vy = mean[:, :130], vy[:, :130]
    z = 4.5
    assert np.all(np.abs(y.mean(0) - mean) < z * np.sqrt(vy / N))
    assert np.all(np.abs(y.var(0, ddof=1) / vy - 1) < z * math.sqrt(2 / (N - 1)))
    # a weighted sum of a copy's outputs: its variance is the sum of the outputs' only if their noise
    # is independent (offset: plus the covariance the shared reference column gives, by hand)
    wts = 1 / np.sqrt(vy)
    s = ((y - mean) * wts).sum(axis=(1, 2))
    wpad = np.zeros((6, op))
    wpad[:, :130] = wts * xs
    var_s = float((wpad ** 2 * (var / c ** 2)).sum())
    if scheme == "offset":
        per_array = (wpad[None] / c).reshape(nrt, 6, -1, Cw).sum(-1)           # (nrt, 6, n_col_tiles)
        var_s += float((var_ref * per_array ** 2).sum())
    assert abs(s.var(ddof=1) / var_s - 1) < 4 * math.sqrt(2 / (N - 1))
