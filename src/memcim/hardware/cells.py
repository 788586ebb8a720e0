"""Cell I-V models for circuit-level crossbar simulation (paper 002, Fig. 2a).

The config section ``cell`` (:class:`memcim.config.CellConfig`) chooses one: ``linear`` (an ohmic
device), ``taox`` or ``taox_1t1r``; :func:`cell_devices` builds the device objects from it.
Two non-linear device models, each vectorised over cells (numpy arrays of any shape):

* :class:`TaOxMemristor`: the tantalum-oxide memristor state model of Strachan et al.
  ("State dynamics and modeling of tantalum oxide memristors", IEEE Trans. Electron Devices
  60(7):2194-2202, 2013), static (read) part::

      i = v * [G_m * s + a * exp(b * sqrt(|v|)) * (1 - s)]

  with state s in [0, 1]: s = 1 is the metallic (ON) channel of conductance G_m, s = 0 the
  insulating (OFF) part with its Frenkel-Poole-like ``exp(b*sqrt|v|)`` non-linearity. Default
  parameters G_m = 2.5e-2 S, a = 7.2e-6 S, b = 4.7 V^-1/2 are the published fit of Strachan et
  al. 2013 (Table I of that paper; reproduced e.g. in Mladenov & Kirilov, Technologies 10(1):6,
  2022). They are the device the DPE paper (Hu et al., DAC 2016, ref. [5] of paper 002) models.

* :class:`Level1NMOS`: an n-channel access transistor with the Shichman-Hodges (SPICE level 1)
  square law, no channel-length modulation, no body effect, symmetric in drain/source (the
  terminal at the lower potential is the source). It is exactly ngspice's ``level=1`` model
  with ``lambda=0 gamma=0`` and no junction leakage, so tests can check against ngspice.
  Defaults KP = 100 uA/V^2, W/L = 5, V_T0 = 0.5 V, gate at 2.0 V: about 1.3 kOhm on-resistance
  near ground, so a 1T1R cell at s = 1 is ~ 1/(40 Ohm + 1.3 kOhm) ~ 0.75 mS, matching the
  ~2 kOhm low-resistance end of the range paper 002 uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TaOxMemristor:
    """Static I-V of the Strachan et al. (2013) TaOx memristor.

    Parameters
    ----------
    g_m : conductance of the fully metallic channel (s = 1) [S].
    a : pre-factor of the insulating-part conductance [S].
    b : non-linearity coefficient [V^-1/2].
    """

    g_m: float = 2.5e-2
    a: float = 7.2e-6
    b: float = 4.7

    def __post_init__(self):
        for name in ("g_m", "a", "b"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"TaOxMemristor.{name}: {v!r} is not allowed; must be a positive finite number")

    def current(self, v, s):
        """Current [A] through the device at voltage ``v`` [V] and state ``s`` (broadcast)."""
        v = np.asarray(v, dtype=float)
        f = self.a * np.exp(self.b * np.sqrt(np.abs(v)))
        return v * (self.g_m * s + f * (1.0 - s))

    def didv(self, v, s):
        """Differential conductance di/dv [S] (finite at v = 0)."""
        v = np.asarray(v, dtype=float)
        r = np.sqrt(np.abs(v))
        f = self.a * np.exp(self.b * r)
        return self.g_m * s + f * (1.0 - s) * (1.0 + 0.5 * self.b * r)

    def state_for_current(self, v, i):
        """State s giving current ``i`` [A] at voltage ``v`` [V] (the model is linear in s).

        Cells with v == 0 get s = nan (any state carries zero current there).
        """
        v = np.asarray(v, dtype=float)
        f = self.a * np.exp(self.b * np.sqrt(np.abs(v)))
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.asarray(i, float) / v - f) / (self.g_m - f)


@dataclass(frozen=True)
class Level1NMOS:
    """Shichman-Hodges (SPICE level 1) n-MOSFET with its gate held at ``v_gate``.

    Parameters
    ----------
    kp : transconductance parameter mu*Cox [A/V^2].
    w_over_l : channel width over length.
    vt0 : threshold voltage [V].
    v_gate : gate voltage [V] (gate driven on).
    """

    kp: float = 100e-6
    w_over_l: float = 5.0
    vt0: float = 0.5
    v_gate: float = 2.0

    def __post_init__(self):
        for name in ("kp", "w_over_l"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"Level1NMOS.{name}: {v!r} is not allowed; must be a positive finite number")
        if not self.v_gate > self.vt0:
            raise ValueError(f"Level1NMOS.v_gate: {self.v_gate!r} must exceed vt0 = {self.vt0} (gate driven on)")

    @property
    def beta(self) -> float:
        return self.kp * self.w_over_l

    def current(self, va, vb):
        """Current [A] from terminal a to terminal b and its partials (i, di/dva, di/dvb)."""
        va = np.asarray(va, float)
        vb = np.asarray(vb, float)
        fwd = va >= vb
        vd = np.where(fwd, va, vb)
        vs = np.where(fwd, vb, va)
        vgs = self.v_gate - vs
        vds = vd - vs
        vov = vgs - self.vt0
        on = vov > 0
        tri = on & (vds < vov)
        sat = on & ~tri
        ids = np.where(tri, self.beta * (vov - 0.5 * vds) * vds, np.where(sat, 0.5 * self.beta * vov ** 2, 0.0))
        # partials w.r.t. drain and source voltages (vgs = vg - vs, vds = vd - vs)
        gd = np.where(tri, self.beta * (vov - vds), 0.0)
        gs = np.where(tri, -self.beta * vds - self.beta * (vov - vds), np.where(sat, -self.beta * vov, 0.0))
        sign = np.where(fwd, 1.0, -1.0)
        i = sign * ids
        dia = np.where(fwd, gd, -gs)   # d(i)/d(va)
        dib = np.where(fwd, gs, -gd)   # d(i)/d(vb)
        return i, dia, dib

    def on_conductance(self, v_source: float = 0.0) -> float:
        """Small-signal channel conductance [S] at vds -> 0 with the source at ``v_source``."""
        return self.beta * max(self.v_gate - v_source - self.vt0, 0.0)


def cell_devices(cell) -> tuple[TaOxMemristor | None, Level1NMOS | None]:
    """(memristor, access transistor) of a :class:`memcim.config.CellConfig`; (None, None) when linear."""
    if cell.model == "linear":
        return None, None
    mem = TaOxMemristor(g_m=cell.g_m, a=cell.a, b=cell.b)
    tr = Level1NMOS(kp=cell.kp, w_over_l=cell.w_over_l, vt0=cell.vt0, v_gate=cell.v_gate) \
        if cell.model == "taox_1t1r" else None
    return mem, tr
