"""Per-preset network overrides of the reference-network experiments (``time/accuracy``, ``015/models``).

A shipped preset describes a published set-up; a few of those set-ups cannot run a reference network as
they stand. :data:`NETWORK_OVERRIDES` lists, in this one place, the settings these experiments change for
such a preset and why; :func:`apply` applies them when the preset is given by its name (a
``HardwareConfig`` object or a file is taken as it is). Every result records the overrides it applied
(``overrides``), and docs/time.md and docs/models.md state them.

``taox`` (Strachan et al. 2013 in paper 002's array): its derived floor ``device.g_min = 0.1 mS`` (the
insulating part of the device alone conducts 59 uS at the 0.2 V read) sits behind ``r_in = r_out =
100 Ohm``. With 64 or more rows at the floor the word line's current through ``r_in`` drops most of the
0.2 V read, so no conductance scale keeps every device within [g_min, g_max] and the ``dpe`` /
``representable`` mapping refuses the layer (measured: 32 x 32 tiles map, 48 x 48 and larger do not). The
experiments therefore tile it 32 x 32, and read it with ``cell.solve = "linearized"`` (each cell replaced
by its conductance at the calibration read, exact there; 1.8-4.7 % of the largest output on other
inputs against Newton, ``bench/bench_cells.py``, docs/engine.md): a Newton solve per input did not read
20 CNN images within 200 s.

Examples
--------
>>> from memcim.experiments.overrides import NETWORK_OVERRIDES, apply
>>> NETWORK_OVERRIDES["taox"]["settings"]["array.rows"]
32
>>> apply("taox").array.rows, apply("pcm").array.rows
(32, 128)
"""
from __future__ import annotations

#: preset name -> {"settings": dotted settings (HardwareConfig.set), "reason": one line}
NETWORK_OVERRIDES = {
    "taox": {"settings": {"array.rows": 32, "array.cols": 32, "cell.solve": "linearized"},
             "reason": "at 64 rows or more its 0.1 mS device floor through r_in = r_out = 100 Ohm drops most of the "
                       "0.2 V read and no conductance scale maps a layer (32 x 32 maps, 48 x 48 does not); "
                       "Newton per input is too slow, the linearized read is exact at the calibration read "
                       "(1.8-4.7 % of the largest output elsewhere, docs/engine.md)"},
}


def apply(spec):
    """The hardware of ``spec`` (a preset name, file or config) with its :data:`NETWORK_OVERRIDES` applied
    when ``spec`` names an overridden preset; any other spec resolves unchanged."""
    from memcim.config import HardwareConfig, resolve_config

    if isinstance(spec, HardwareConfig):
        return spec
    hw = resolve_config(spec)
    if isinstance(spec, str) and spec in NETWORK_OVERRIDES:
        hw = hw.set(NETWORK_OVERRIDES[spec]["settings"])
    return hw


def applied(specs, hws) -> dict:
    """The overrides :func:`apply` used for ``specs`` (resolved to ``hws``): {hardware name: entry}."""
    return {h.name: dict(NETWORK_OVERRIDES[s]) for s, h in zip(specs, hws)
            if isinstance(s, str) and s in NETWORK_OVERRIDES}


def hardware_list(hw, default, empty: str) -> tuple[list, dict]:
    """The hardware of ``hw`` (one spec or a list; None: the names ``default()``), each through
    :func:`apply`, and the overrides applied. ``empty`` is the message when there is none; a spec that does
    not resolve is a ``hw:`` error."""
    specs = default() if hw is None else (list(hw) if isinstance(hw, (list, tuple)) else [hw])
    if not specs:
        raise ValueError(empty)
    out = []
    for h in specs:
        try:
            out.append(apply(h))
        except ValueError as e:
            raise ValueError(f"hw: {str(e).split(': ', 1)[-1]}") from None
    return out, applied(specs, out)
