"""Bundled presets: every one loads, round-trips and says where its numbers come from; the presets fitted to
published measurements reproduce the paper's values (checked by hand from the config fields, not by
simulation: drift and 1/f simulation are tested with the device model). See docs/devices.md."""
import math
import re
from importlib import resources

import numpy as np
import pytest

from memcim.config import HardwareConfig, preset, preset_names
from memcim.hardware.cells import TaOxMemristor

#: Presets fitted to (or set up from) a published paper, and the presets that cite none.
FITTED = ("pcm", "taox", "wan2022", "hfo2")
UNSOURCED = {"ideal", "noisy", "generic"}  # ideal by definition; noisy and generic cite no data (issue 14)
CITATION = re.compile(r"Source|doi|et al\.|Paper 00\d", re.IGNORECASE)
US = 1e-6


def _header(name: str) -> str:
    text = resources.files("memcim.presets").joinpath(f"{name}.toml").read_text()
    return "\n".join(ln for ln in text.split("\nname =")[0].splitlines() if ln.startswith("#"))


@pytest.mark.parametrize("name", preset_names())
def test_preset_loads_and_round_trips(name):
    hw = preset(name)
    assert hw.name == name
    assert HardwareConfig.from_toml(hw.to_toml()) == hw
    assert HardwareConfig.from_json(hw.to_json()) == hw


@pytest.mark.parametrize("name", preset_names())
def test_preset_cites_a_source(name):
    head = _header(name)
    assert head, f"{name}.toml has no header comment"
    if name not in UNSOURCED:
        assert CITATION.search(head), f"{name}.toml cites no paper (Source / doi / et al.)"


@pytest.mark.parametrize("name", FITTED)
def test_fitted_presets_exist_and_cite_doi(name):
    assert name in preset_names()
    assert "doi" in _header(name).lower() or "IEEE" in _header(name)


# ---- PCM: Joshi et al., Nat. Commun. 11, 2473 (2020), Methods; Nandakumar et al., ICECS 2019 ---------------

def _paper_sigma_prog(gt):
    """sigma_prog [uS] = max(-1.1731 g_T^2 + 1.9650 g_T + 0.2635, 0), g_T = G / G_max."""
    return max(-1.1731 * gt ** 2 + 1.9650 * gt + 0.2635, 0.0)


def _preset_sigma_prog(dev, gt):
    return max(0.0, sum(c * gt ** k for k, c in enumerate(dev.prog_sigma_poly)))


def test_pcm_window_and_read_pulse():
    d = preset("pcm").device
    assert d.g_max == pytest.approx(25 * US)
    assert d.g_min == 0.0 and d.levels is None
    assert d.read_t_read == pytest.approx(250e-9)
    assert d.drift_t0 == pytest.approx(20.0)
    assert preset("pcm").compensation.drift == "global"


def test_pcm_programming_noise_matches_paper_curve():
    d = preset("pcm").device
    # curve endpoints: 0.2635 uS at G = 0, 1.0554 uS at G = g_max
    assert _preset_sigma_prog(d, 0.0) == pytest.approx(0.2635 * US, rel=1e-12)
    assert _preset_sigma_prog(d, 1.0) == pytest.approx((0.2635 + 1.9650 - 1.1731) * US, rel=1e-12)
    assert _preset_sigma_prog(d, 1.0) == pytest.approx(1.0554 * US, rel=1e-12)
    # the whole curve, and its maximum 1.086 uS at g_T = 1.9650 / (2 * 1.1731) = 0.8375
    for gt in np.linspace(0, 1, 41):
        assert _preset_sigma_prog(d, gt) == pytest.approx(_paper_sigma_prog(gt) * US, rel=1e-12, abs=1e-15)
    assert _preset_sigma_prog(d, 1.9650 / (2 * 1.1731)) == pytest.approx(1.0864 * US, abs=1e-4 * US)


def _mu(d, gt):
    return min(max(d.drift_nu + d.drift_nu_slope * math.log(gt), d.drift_nu_min), d.drift_nu_max)


def _s(d, gt):
    """The spread memcim draws with (memcim.hardware.device.drift_parameters) at g_T = G / g_max."""
    import torch

    from memcim.hardware.device import drift_parameters

    return float(drift_parameters(torch.tensor([gt * d.g_max], dtype=torch.float64), d)[1][0])


def test_pcm_drift_exponent_mean_is_the_paper_fit():
    d = preset("pcm").device
    for gt in np.geomspace(1e-3, 1.0, 31):
        paper = min(max(-0.0155 * math.log(gt) + 0.0244, 0.049), 0.1)
        assert _mu(d, gt) == pytest.approx(paper, abs=1e-12)
    assert _mu(d, 1.0) == pytest.approx(0.049)       # clipped from below at high G
    assert _mu(d, 1e-3) == pytest.approx(0.1)        # clipped from above at low G


def test_pcm_drift_exponent_spread_matches_the_paper_fit():
    """s(G) = clip(-0.0125 ln g_T - 0.0059, 0.008, 0.045), the paper's curve, everywhere on g_T in [1e-4, 1]."""
    d = preset("pcm").device
    x = np.linspace(math.log(1e-4), 0.0, 401)
    paper = np.clip(-0.0125 * x - 0.0059, 0.008, 0.045)
    ours = np.array([_s(d, math.exp(v)) for v in x])
    assert np.abs(ours - paper).max() < 1e-12


def test_pcm_flicker_q_matches_paper():
    d = preset("pcm").device

    def q(gt):
        return min(d.read_1f_q * gt ** (-d.read_1f_exp), d.read_1f_q_max)

    assert q(1.0) == pytest.approx(0.0088)
    for gt in np.geomspace(1e-3, 1.0, 31):
        assert q(gt) == pytest.approx(min(0.0088 / gt ** 0.65, 0.2))
    assert q(1e-3) == pytest.approx(0.2)
    # sigma_nG at t = 1 h, G = g_max: G Q_s sqrt(ln((t + t_r) / (2 t_r)))
    t = 3600.0
    sig = d.g_max * q(1.0) * math.sqrt(math.log((t + d.read_t_read) / (2 * d.read_t_read)))
    assert sig == pytest.approx(25 * US * 0.0088 * math.sqrt(math.log((3600 + 250e-9) / 500e-9)))


# ---- TaOx: Strachan et al., IEEE TED 60(7):2194 (2013), in paper 002's set-up ------------------------------

def test_taox_cell_is_strachan_fit_in_paper_002_array():
    hw = preset("taox")
    c = hw.cell
    assert (c.model, c.g_m, c.a, c.b) == ("taox", 2.5e-2, 7.2e-6, 4.7)
    assert (hw.wires.r_wire, hw.wires.r_in, hw.wires.r_out) == (1.0, 100.0, 100.0)
    assert (hw.array.rows, hw.array.cols, hw.array.v_read) == (128, 128, 0.2)
    assert hw.device.levels == 256 and hw.device.g_max == pytest.approx(1 / 2e3)
    assert hw.reader == "circuit"


def test_taox_window_is_reachable_by_the_device():
    hw = preset("taox")
    m = TaOxMemristor(g_m=hw.cell.g_m, a=hw.cell.a, b=hw.cell.b)
    v = hw.array.v_read
    g_off = float(m.current(v, 0.0)) / v            # s = 0 at the calibration read: 58.9 uS
    g_on = float(m.current(v, 1.0)) / v             # s = 1: g_m = 25 mS
    assert g_off == pytest.approx(7.2e-6 * math.exp(4.7 * math.sqrt(0.2)))
    assert g_off == pytest.approx(58.9 * US, rel=1e-3)
    assert g_off < hw.device.g_min < hw.device.g_max < g_on
    # every target has a state in [0, 1]
    for g in np.linspace(hw.device.g_min, hw.device.g_max, 5):
        s = float(m.state_for_current(v, g * v))
        assert 0.0 <= s <= 1.0


# ---- NeuRRAM: Wan et al., Nature 608, 504 (2022) ----------------------------------------------------------

def test_wan2022_core_window_and_mapping():
    hw = preset("wan2022")
    d = hw.device
    assert (hw.array.rows, hw.array.cols) == (256, 256)
    assert hw.mapping.scheme == "differential"
    # Fig. 4c: weights are programmed to continuous analogue conductances, without quantization
    assert d.levels is None
    # the authors' notebooks: g_max = 40 uS, the unused device of a pair at ~0 S, write-verify to +-1 uS
    assert (d.g_min, d.g_max) == (0.0, pytest.approx(40 * US))
    assert d.prog_sigma_abs == pytest.approx(1 * US / math.sqrt(3))
    assert not d.has_drift and hw.active_nonidealities() == ("programming",)


def test_wan2022_relaxation_sigma_is_the_cubic_fit():
    """sigma(G) = 1.536e-4 G^3 - 1.167e-2 G^2 + 0.2374 G + 1.053 [uS, G in uS] (Ext. Data Fig. 3, t = 1 s)."""
    d = preset("wan2022").device
    for g_us in np.linspace(0.0, 40.0, 41):
        paper = 1.536e-4 * g_us ** 3 - 1.167e-2 * g_us ** 2 + 0.2374 * g_us + 1.053
        assert _preset_sigma_prog(d, g_us * US / d.g_max) == pytest.approx(paper * US, rel=1e-9)
    assert _preset_sigma_prog(d, 0.25) == pytest.approx(2.4136 * US, rel=1e-4)


def test_realistic_is_renamed_generic_and_still_loads(capsys):
    """Issue 14: 'realistic' cited no data, so it is 'generic' now; the old name loads it with one warning."""
    from memcim.cli import main

    with pytest.warns(FutureWarning, match="now called 'generic'"):
        hw = preset("realistic")
    assert hw == preset("generic") and "realistic" not in __import__("memcim.config").config.preset_names()
    assert main(["hw", "show", "realistic", "--json"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["memcim: warning: preset 'realistic' is now called 'generic'; loading 'generic'"]
