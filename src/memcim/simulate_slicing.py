"""Monte Carlo of bit-sliced crossbars (``hw.slicing``; the plan: :mod:`memcim.mapping.slicing`).

A sliced chip is one :class:`~memcim.simulate.ProgrammedChip` per weight slice, each programmed
with the same device physics (:func:`memcim.simulate.program` on the slice's plan, its own seed)
and read by the same reader, read noise, DAC and ADC code. One read of the sliced chip:

* ``parallel`` / ``pulse_width`` inputs: every slice reads ``x`` once (``chip.mvm``; its ADCs convert
  the slice's partial sums); a pulse-width read integrates ``|q|`` full-amplitude slots, whose charge
  with a linear reader equals the amplitude read of ``q/K``, so it is the same read;
* ``bit_serial``: every slice reads every input cycle ``u_j`` (:func:`memcim.mapping.slicing.input_drives`,
  ``chip.mvm_drives``: one ADC conversion per cycle and slice) and the cycles are added with their
  weights;

then the slices are added with their significance, ``y = s_w (sum_k 2**S_k y_k + o sum_i x^_i)``,
``x^`` the DAC's reconstruction of the input (the digital periphery knows the input code).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memcim.hardware.converters import dac_convert
from memcim.mapping.slicing import SlicedPlan, input_drives

__all__ = ["SlicedChip", "program_sliced", "slice_seeds"]


def slice_seeds(seed: int | None, n: int) -> list[int | None]:
    """Independent seeds of the ``n`` slice chips from one seed (numpy's SeedSequence spawning)."""
    if seed is None:
        return [None] * n
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: {seed!r} is not allowed; use a non-negative integer")
    return [int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
            for s in np.random.SeedSequence(int(seed)).spawn(n)]


@dataclass(eq=False)
class SlicedChip:
    """``trials`` programmed bit-sliced chips: one :class:`~memcim.simulate.ProgrammedChip` per slice."""

    mapped: SlicedPlan
    chips: tuple

    @property
    def trials(self) -> int:
        return self.chips[0].trials

    @property
    def device(self):
        return self.chips[0].device

    @property
    def dtype(self):
        return self.chips[0].dtype

    def realized(self, t: float | None = None) -> torch.Tensor:
        """Each chip's effective matrix with converters and read noise off, (trials, in, out)."""
        p = self.mapped
        acc = sum(a * c.realized(t) for a, c in zip(p.significance, self.chips))
        return p.weight_step.to(acc) * (acc + p.offset)

    def mvm(self, x, seed: int | None = None, generator: torch.Generator | None = None, *,
            differentiable: bool = False, t: float | None = None) -> torch.Tensor:
        """One read of every chip, ``y ~ x @ W`` (trials, batch, out); see the module docstring.
        ``seed`` / ``generator`` replace the slices' own read-noise generators (one stream for all)."""
        if differentiable:
            raise ValueError("differentiable: the training read of bit-sliced hardware is not supported; "
                             "train unsliced and evaluate sliced")
        p = self.mapped
        c0 = self.chips[0]
        x = c0._check_inputs(x)
        gen = generator
        if gen is None and seed is not None:
            from memcim.simulate import _generator

            gen = _generator(seed, self.device)
        drives = input_drives(x, p.hw, p.cycles) if p.cycles else None
        y = None
        for a, chip in zip(p.significance, self.chips):
            if drives is None:
                yk = chip.mvm(x, generator=gen, t=t)
            else:
                yk = sum(chip.mvm_drives(u, w, generator=gen, t=t) for u, w in drives)
            y = a * yk if y is None else y + a * yk
        if p.offset != 0.0:
            u, xs = dac_convert(x, p.hw.dac)
            y = y + p.offset * (u * xs).sum(dim=-1, keepdim=True)
        return y * p.weight_step[: p.out_features].to(y)


def program_sliced(plan: SlicedPlan, seed: int | None = None, trials: int = 1, *, dtype=torch.float32, device=None,
                   weights=None, reference_inputs=None) -> SlicedChip:
    """Program ``trials`` sliced chips: every slice's plan by :func:`memcim.simulate.program` with its
    own seed (:func:`slice_seeds`)."""
    from memcim.simulate import program

    if weights is not None:
        raise ValueError("weights: the trainable programming of bit-sliced hardware is not supported; "
                         "train unsliced and evaluate sliced")
    seeds = slice_seeds(seed, plan.n_slices)
    chips = tuple(program(p, seed=s, trials=trials, dtype=dtype, device=device, reference_inputs=reference_inputs)
                  for p, s in zip(plan.slices, seeds))
    return SlicedChip(mapped=plan.to(chips[0].device), chips=chips)
