"""External check of the issue-15 layers against aihwkit (issue 15, item 5): the shipped LSTM
(``mnist-lstm-row``) and ResNet-style CNN (``mnist-resnet-small``) on PCM, memcim's ``pcm`` preset
beside aihwkit 1.1.0's ``PCMLikeNoiseModel``, accuracy over chips and wall time side by side.

aihwkit is a benchmark peer only: it is imported here, never from ``src/``.

Matched settings (as in ``bench/bench_drift_aihwkit.py``, which checked this device pair on the MLP):

* the device: memcim's ``pcm`` preset (Joshi et al. 2020 / Nandakumar et al. 2019: g_max = 25 uS,
  programming-noise polynomial, 1/f read noise with t_read = 250 ns, t0 = 20 s) and
  ``PCMLikeNoiseModel(g_max=25, t_0=20, t_read=250e-9)`` (the same paper model);
* perfect I/O: memcim's pcm has no DAC, ADC, wires or thermal/shot noise; aihwkit's
  ``forward.is_perfect = True`` (the pure-torch ``TorchInferenceRPUConfig`` tile);
* one differential pair per weight, the unused device at 0 S (both); biases added digitally;
* global drift compensation (``compensation.drift = "global"`` / ``GlobalDriftCompensation()``);
* one read at t0 = 20 s after programming (memcim: ``device.drift_t0``, its first read; aihwkit:
  ``drift_analog_weights(0)``, which applies programming-time drift, 1/f noise and compensation);
* every chip programmed anew (memcim: ``layer_seed(seed, c)``; aihwkit: ``torch.manual_seed`` then
  ``program_analog_weights()``), each read once over the ``--n`` test images.

Setups: ``tiles128`` (128 x 128 arrays in both: memcim one weight scale per layer matrix, aihwkit one
per tile) and ``tile1024`` (one tile per matrix in both, so the weight scale and the compensation
factor are per matrix in both: the closest the two can be configured); ``tile1024-no-1f``
(``tile1024`` without the 1/f read noise in both: programming noise and compensation only).

What aihwkit cannot convert (recorded in the JSON):

* ``nn.LSTM``: aihwkit's ``convert_to_analog`` has no ``nn.LSTM`` entry (its conversion map holds
  Linear and Conv1d/2d/3d); the LSTM stays digital there. This bench therefore also builds aihwkit's
  own ``AnalogRNN(AnalogLSTMCell)`` with the trained ``weight_ih``/``weight_hh`` and biases copied in
  (the same gate equations as ``nn.LSTM``), which is the LSTM-on-tiles comparison.
* the depthwise ``Conv2d(groups=32)`` of the ResNet's separable block: aihwkit's ``AnalogConv2d``
  raises "Only one group is supported" (aihwkit issue 529). aihwkit runs with that layer excluded
  (digital); memcim is run twice: with every layer on crossbars, and with the depthwise convolution
  kept digital as in aihwkit (``overrides={"block3.depthwise": None}``), the matched comparison.
  Likewise the LSTM: aihwkit's ``convert_to_analog`` (LSTM digital) is compared with memcim's LSTM
  kept digital (``overrides={"lstm": None}``), and aihwkit's ``AnalogRNN`` with memcim's LSTM on
  crossbars.

Writes ``bench/results/layers_aihwkit.json`` and prints the table::

    .venv/bin/python bench/bench_layers_aihwkit.py --chips 10 --n 500     # one thread
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
T0 = 20.0


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (difference as _difference, mnist_test, outputs as _outputs, pcm_rpu_config, peer_args,  # noqa: E402
                     read as _read, summary as _summary)


# ------------------------------------------------------------------ memcim
def run_memcim(model, x, y, ref, calib, hw, chips, seed, batch, overrides=None):
    """Accuracy and relative output error per chip, the conversion report, and the seconds of the
    chip loop (programming + reads; the conversion is timed apart)."""
    from memcim.nn.analog import conversion_report, convert_to_analog, layer_seed, program

    t = time.perf_counter()
    analog = convert_to_analog(model, hw, calib_data=calib, overrides=overrides).eval()
    t_conv = time.perf_counter() - t
    acc, err = [], []
    t = time.perf_counter()
    for c in range(chips):
        program(analog, layer_seed(seed, c))
        a, e = _read(analog, x, y, ref, batch)
        acc.append(a)
        err.append(e)
    rep = conversion_report(analog).to_dict()
    return {"accuracy": _summary(acc), "rel_error": _summary(err), "seconds": time.perf_counter() - t,
            "convert_seconds": t_conv,
            "analog": [a["name"] for a in rep["analog"]], "digital": [d["name"] for d in rep["digital"]]}


# ------------------------------------------------------------------ aihwkit
def rpu_config(tile, read_noise=True):
    return pcm_rpu_config(tile, T0, read_noise)


class AihwkitLSTMRow(nn.Module):
    """:class:`memcim.nn.models.LSTMRow` with aihwkit's ``AnalogRNN(AnalogLSTMCell)`` in place of
    ``nn.LSTM`` (its trained weights and biases copied in) and the digital head."""

    def __init__(self, model, rpu):
        super().__init__()
        from aihwkit.nn import AnalogRNN
        from aihwkit.nn.modules.rnn.cells import AnalogLSTMCell

        lstm = model.lstm
        if lstm.num_layers != 1 or lstm.bidirectional or getattr(lstm, "proj_size", 0):
            raise ValueError("model: only the one-layer, one-direction LSTM of LSTMRow is mirrored here")
        self.steps, self.features = model.steps, model.features
        self.rnn = AnalogRNN(AnalogLSTMCell, lstm.input_size, lstm.hidden_size, bias=True, rpu_config=rpu)
        cell = self.rnn.rnn.layers[0].cell
        with torch.no_grad():
            cell.weight_ih.set_weights(lstm.weight_ih_l0.detach().clone(), lstm.bias_ih_l0.detach().clone())
            cell.weight_hh.set_weights(lstm.weight_hh_l0.detach().clone(), lstm.bias_hh_l0.detach().clone())
        self.fc = copy.deepcopy(model.fc)

    def forward(self, x):
        seq = x.permute(0, 2, 1, 3).reshape(x.shape[0], self.steps, self.features).transpose(0, 1)   # (T, N, F)
        out, _ = self.rnn(seq)
        return self.fc(out[-1])


def aihwkit_model(model, kind, tile, variant, read_noise=True):
    """The aihwkit twin of ``model`` and what stays digital (names and reasons)."""
    from aihwkit.nn.conversion import convert_to_analog

    rpu = rpu_config(tile, read_noise)
    digital = []
    if kind == "lstm":
        if variant == "convert_to_analog":
            net = convert_to_analog(copy.deepcopy(model), rpu)
            digital.append({"name": "lstm", "type": "LSTM", "reason": "not in aihwkit's conversion map "
                            "(Linear, Conv1d/2d/3d only); stays digital"})
        else:   # AnalogRNN with the trained weights; the head stays digital as memcim's would not
            net = convert_to_analog(AihwkitLSTMRow(model, rpu), rpu)   # converts fc too; wraps the root
    else:
        try:
            net = convert_to_analog(copy.deepcopy(model), rpu)
        except Exception as e:   # noqa: BLE001 - record what aihwkit refuses
            digital.append({"name": "block3.depthwise", "type": "Conv2d(groups=32)",
                            "reason": f"aihwkit refuses it ({type(e).__name__}: {e}); excluded, stays digital"})
            net = convert_to_analog(copy.deepcopy(model), rpu, exclude_modules=["block3.depthwise"])
    return net.eval(), digital


def run_aihwkit(net, x, y, ref, chips, seed, batch):
    acc, err = [], []
    t = time.perf_counter()
    for c in range(chips):
        torch.manual_seed(10_000 * (seed + 1) + c)
        net.program_analog_weights()       # one chip: programming noise
        net.drift_analog_weights(0.0)      # the read at t0: 1/f noise, global compensation
        a, e = _read(net, x, y, ref, batch)
        acc.append(a)
        err.append(e)
    layers = ("AnalogLinear", "AnalogConv1d", "AnalogConv2d", "AnalogConv3d", "AnalogLinearMapped",
              "AnalogConv2dMapped")
    analog = [n for n, m in net.named_modules() if type(m).__name__ in layers]
    return {"accuracy": _summary(acc), "rel_error": _summary(err), "seconds": time.perf_counter() - t,
            "analog_modules": analog}


def compare(m, a):
    return {**_difference(m["accuracy"], a["accuracy"]),
            "time_ratio_aihwkit_over_memcim": a["seconds"] / m["seconds"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    peer_args(ap, chips=10, n=500, out=str(ROOT / "bench" / "results" / "layers_aihwkit.json"))
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--setups", default="tiles128,tile1024")
    ap.add_argument("--models", default="mnist-lstm-row,mnist-resnet-small")
    ap.add_argument("--update", action="store_true",
                    help="merge the setups run now into --out (its other models/setups and table lines kept)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    import aihwkit

    from memcim.config import preset
    from memcim.io import provenance
    from memcim.nn.loading import fit_input
    from memcim.nn.models import get_reference_model

    spec = f"mnist:test:{args.n}"
    ds, calib = mnist_test(args.n)
    x, y = ds.x, ds.y
    pcm = preset("pcm")
    assert pcm.compensation.drift == "global" and pcm.device.drift_t0 == T0
    setups = {"tiles128": (pcm, 128, "128x128 arrays in both: memcim one weight scale per layer matrix, aihwkit "
                                      "one per tile"),
              "tile1024": (pcm.replace(array={"rows": 1024, "cols": 1024}), 1024,
                           "one tile per matrix in both (weight scale and compensation per matrix in both)"),
              "tile1024-no-1f": (pcm.replace(array={"rows": 1024, "cols": 1024}).without("flicker"), 1024,
                                 "tile1024 with the 1/f read noise off in both (memcim without flicker, aihwkit "
                                 "read_noise_scale = 0): programming noise and compensation only")}
    doc = {"what": "accuracy over chips of mnist-lstm-row and mnist-resnet-small on PCM at t0: memcim pcm preset vs "
                   "aihwkit 1.1.0 TorchInferenceRPUConfig + PCMLikeNoiseModel(g_max=25), perfect I/O, global drift "
                   "compensation, digital biases",
           "command": "python bench/bench_layers_aihwkit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "aihwkit_version": aihwkit.__version__, "torch_threads": args.threads, "data": spec, "chips": args.chips,
           "seed": args.seed, "memcim_hw": pcm.to_dict(), "models": {}, "provenance": provenance(seed=args.seed)}
    lines = [f"{spec}, {args.chips} chips each, PCM at t0 = 20 s, {args.threads} thread(s)",
             f"{'model':19s} {'setup':9s} {'variant':42s} {'memcim %':>15s} {'aihwkit %':>15s} {'diff':>6s} "
             f"{'z':>5s} {'t memcim':>9s} {'t aihwkit':>9s}"]
    for name in [m for m in args.models.split(",") if m]:
        kind = "lstm" if "lstm" in name else "resnet"
        model = fit_input(get_reference_model(name), ds.input_shape).float().eval()
        ref = _outputs(model, x, args.batch)
        entry = {"digital_accuracy": float((ref.argmax(1) == y).float().mean()), "setups": {}}
        for sname in [s for s in args.setups.split(",") if s]:
            hw, tile, note = setups[sname]
            rows = {}
            # (label, aihwkit variant, memcim overrides): each pair runs the same layers on crossbars
            variants = ([("LSTM on tiles (aihwkit AnalogRNN)", "AnalogRNN", None),
                         ("LSTM digital in both (convert_to_analog)", "convert_to_analog", {"lstm": None})]
                        if kind == "lstm" else
                        [("depthwise digital in both", "convert_to_analog", {"block3.depthwise": None}),
                         ("memcim all layers, aihwkit no depthwise", "convert_to_analog", None)])
            memo = {}
            for v, av, ov in variants:
                key = tuple(sorted(ov)) if ov else ()
                if key not in memo:
                    memo[key] = run_memcim(model, x, y, ref, calib, hw, args.chips, args.seed, args.batch,
                                           overrides=ov)
                mm = memo[key]
                net, dig = aihwkit_model(model, kind, tile, av, read_noise=not sname.endswith("no-1f"))
                a = run_aihwkit(net, x, y, ref, args.chips, args.seed, args.batch)
                a["kept_digital"] = dig
                rows[v] = {"memcim": mm, "aihwkit": a, **compare(mm, a)}
                z = rows[v]["z"]
                lines.append(f"{name:19s} {sname:9s} {v:42s} {mm['accuracy']['mean'] * 100:7.2f} ± "
                             f"{mm['accuracy']['std'] * 100:4.2f} {a['accuracy']['mean'] * 100:7.2f} ± "
                             f"{a['accuracy']['std'] * 100:4.2f} {rows[v]['difference'] * 100:+6.2f} "
                             f"{'n/a' if z is None else f'{z:.1f}':>5s} {mm['seconds']:8.1f}s {a['seconds']:8.1f}s")
                print(lines[-1], file=sys.stderr, flush=True)
            entry["setups"][sname] = {"note": note, "tile": tile, "variants": rows}
        doc["models"][name] = entry
    doc["table"] = lines
    out = Path(args.out)
    if args.update and out.is_file():
        old = json.loads(out.read_text())
        for name, entry in doc["models"].items():
            old["models"].setdefault(name, entry)["setups"].update(entry["setups"])
        old["table"] = old["table"] + lines[2:]
        old.setdefault("updates", []).append({"command": doc["command"], "data": spec, "chips": args.chips,
                                              "provenance": doc["provenance"]})
        doc = old
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
