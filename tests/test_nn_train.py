"""Training loop (checkpoint/resume), reference-model cache, model loading, and the CLI commands."""
import json

import pytest
import torch
from torch import nn

import memcim.nn.models as models
from memcim.cli import main
from memcim.data.digits import load_digits
from memcim.nn.analog import convert_to_analog, convert_to_digital
from memcim.nn.loading import load_model, load_model_file
from memcim.nn.models import build_model
from memcim.nn.train import CHECKPOINT_NAME, evaluate_accuracy, train

from _nn_helpers import digits_mlp


class CustomNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_build_model_shapes_match_the_papers():
    mlp = build_model("mlp-500-300")
    assert [m.weight.shape[::-1] for m in mlp if isinstance(m, nn.Linear)] == [(784, 500), (500, 300), (300, 10)]
    assert [m.out_features for m in build_model("mlp-256-128") if isinstance(m, nn.Linear)] == [256, 128, 10]
    cnn = build_model("cnn-small")
    convs = [m for m in cnn if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [2, 4, 8, 16, 16]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.AvgPool2d) for m in cnn) == 5 and sum(isinstance(m, nn.Softplus) for m in cnn) == 5
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert [c.out_channels for c in build_model("cnn-large", (3, 32, 32)) if isinstance(c, nn.Conv2d)] == \
        [16, 32, 64, 128, 128]
    a, b = build_model("mlp-10", seed=3), build_model("mlp-10", seed=3)
    assert torch.equal(a[1].weight, b[1].weight)
    with pytest.raises(ValueError, match="^arch: 'resnet' is not known"):
        build_model("resnet")


def test_training_reaches_accuracy_and_resume_is_exact(tmp_path):
    ds = load_digits("train")
    kw = dict(epochs=3, lr=1e-2, batch_size=64, seed=1, progress=False)
    full = build_model("mlp-16", (1, 8, 8), seed=0)
    train(full, ds, **kw)
    interrupted = build_model("mlp-16", (1, 8, 8), seed=0)
    h1 = train(interrupted, ds, checkpoint_dir=tmp_path, stop_after=2, **kw)
    assert h1["epochs_done"] == 2 and (tmp_path / CHECKPOINT_NAME).is_file()
    resumed = build_model("mlp-16", (1, 8, 8), seed=0)      # a fresh process would start here
    h2 = train(resumed, ds, checkpoint_dir=tmp_path, **kw)
    assert h2["resumed_from"] == 2 and h2["epochs_done"] == 3
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)                              # bit-identical to an uninterrupted run
    assert evaluate_accuracy(resumed, load_digits("test")) > 0.8
    with pytest.raises(ValueError, match="^checkpoint_dir: checkpoint .* other settings"):
        train(build_model("mlp-16", (1, 8, 8)), ds, checkpoint_dir=tmp_path, **dict(kw, lr=0.5))
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"junk")
    with pytest.raises(ValueError, match="unreadable"):
        train(build_model("mlp-16", (1, 8, 8)), ds, checkpoint_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match="^epochs: 0 is not allowed"):
        train(full, ds, epochs=0)


def test_hardware_aware_fine_tuning_keeps_accuracy_and_converts_back():
    """Fine-tuning with strong noise injection stays finite, keeps digital accuracy, returns plain layers."""
    from memcim.config import preset

    ds, te = load_digits("train"), load_digits("test")
    hw = preset("ideal").replace(device={"prog_sigma_rel": 0.5})
    a = convert_to_analog(digits_mlp(), hw, seed=0)
    h = train(a, ds, epochs=3, lr=3e-3, batch_size=64, seed=0, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])))
    tuned = convert_to_digital(a)
    assert type(tuned[1]) is nn.Linear and evaluate_accuracy(tuned, te) > 0.85


def test_hardware_aware_training_resumes_bit_identically(tmp_path):
    """The training chips are drawn from each layer's generator, saved in the checkpoint: an interrupted
    and resumed hardware-aware run draws the same chips and ends with the same weights."""
    from memcim.config import preset

    ds = load_digits("train").subset(512)
    kw = dict(epochs=2, lr=3e-3, batch_size=64, seed=0, progress=False)
    hw = preset("noisy")
    full = convert_to_analog(digits_mlp(), hw, seed=1)
    train(full, ds, **kw)
    part = convert_to_analog(digits_mlp(), hw, seed=1)
    train(part, ds, checkpoint_dir=tmp_path, stop_after=1, **kw)
    resumed = convert_to_analog(digits_mlp(), hw, seed=1)
    h = train(resumed, ds, checkpoint_dir=tmp_path, **kw)
    assert h["resumed_from"] == 1
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    other = convert_to_analog(digits_mlp(), hw, seed=2)            # other chips, other weights
    train(other, ds, **kw)
    assert not torch.equal(other[1].weight, full[1].weight)


def test_reference_model_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMCIM_CACHE", str(tmp_path))
    monkeypatch.setitem(models.REFERENCE_MODELS, "digits-tiny",
                        dict(arch="mlp-16", dataset="digits", epochs=2, lr=1e-2, batch_size=64,
                             weight_decay=0.0, seed=0, paper="test"))
    m1 = models.get_reference_model("digits-tiny", progress=False)
    assert (tmp_path / "models" / "digits-tiny.pt").is_file()
    info = models.reference_info("digits-tiny")
    assert 0 < info["test_accuracy"] <= 1 and info["arch"] == "mlp-16"

    def boom(*a, **k):
        raise AssertionError("must not retrain")

    import memcim.nn.train as tr
    monkeypatch.setattr(tr, "train", boom)
    m2 = models.get_reference_model("digits-tiny")
    x = load_digits("test").x[:5]
    assert torch.equal(m1(x), m2(x))
    with pytest.raises(ValueError, match="^model: 'nope' is not a reference model"):
        models.get_reference_model("nope")


def test_load_model_file_safety(tmp_path):
    model = digits_mlp()
    torch.save(model, tmp_path / "m.pt")
    x = load_digits("test").x[:4]
    assert torch.equal(load_model(str(tmp_path / "m.pt"))(x), model(x))
    torch.save(CustomNet(), tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="needs full unpickling .*CustomNet.*--trust-model-file"):
        load_model_file(tmp_path / "custom.pt")
    assert isinstance(load_model_file(tmp_path / "custom.pt", trust_model_file=True), CustomNet)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="holds a state dict, not a model"):
        load_model_file(tmp_path / "sd.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_model_file(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="neither a reference model name nor an existing file"):
        load_model(str(tmp_path / "missing.pt"))


def test_cli_evaluate_two_hw_json(tmp_path, capsys):
    model = digits_mlp()
    torch.save(model, tmp_path / "m.pt")
    rc = main(["evaluate", "--model", str(tmp_path / "m.pt"), "--data", "digits:test:100", "--hw", "ideal",
               "--hw", "noisy", "--chips", "3", "--json", "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["hardware"] for r in doc["results"]] == ["ideal", "noisy"]
    te = load_digits("test").subset(100)
    assert doc["digital_accuracy"] == pytest.approx(float((model(te.x).argmax(1) == te.y).float().mean()))
    ideal, noisy = doc["results"]
    assert ideal["accuracy"]["mean"] == pytest.approx(doc["digital_accuracy"])
    assert ideal["mse"]["mean"] < 1e-8 and noisy["mse"]["mean"] > 1e-4
    assert len(noisy["accuracy"]["values"]) == 3 and noisy["accuracy"]["ci95_mean"][0] <= noisy["accuracy"]["mean"]
    assert doc["provenance"]["seed"] == 0 and doc["n_samples"] == 100
    assert json.loads((tmp_path / "evaluate.json").read_text())["results"][1]["hardware"] == "noisy"


def test_cli_evaluate_one_chip_text(tmp_path, capsys):
    torch.save(digits_mlp(), tmp_path / "m.pt")
    assert main(["evaluate", "--model", str(tmp_path / "m.pt"), "--data", "digits:50", "--hw", "noisy",
                 "--chips", "1"]) == 0
    out = capsys.readouterr().out
    assert "one chip: no interval" in out and "nan" not in out


@pytest.mark.parametrize("argv, msg", [
    (["--chips", "0"], "--chips: 0 is not allowed"),
    (["--data", "imagenet"], "--data: 'imagenet' is not known"),
    (["--hw", "nope"], "--hw: unknown preset 'nope'"),
    (["--data", "digits:0"], "--data: 'digits:0' asks for 0 samples"),
    (["--method", "magic"], "--method: 'magic' is not allowed"),
    (["--normalize", "0,0"], "--normalize: (0.0, 0.0) is not allowed"),
    (["--batch-size", "0"], "--batch-size: 0 is not allowed"),
])
def test_cli_evaluate_errors(tmp_path, capsys, argv, msg):
    torch.save(digits_mlp(), tmp_path / "m.pt")
    rc = main(["evaluate", "--model", str(tmp_path / "m.pt"), "--data", "digits", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.splitlines()[-1].startswith("memcim evaluate: error: ")


def test_cli_evaluate_model_input_mismatch(capsys, tmp_path):
    torch.save(build_model("cnn-small"), tmp_path / "cnn.pt")
    rc = main(["evaluate", "--model", str(tmp_path / "cnn.pt"), "--data", "digits"])
    assert rc == 2 and "--input-shape: the model does not accept samples of shape (1, 8, 8)" in capsys.readouterr().err


def test_cli_train_resume_and_hardware_aware(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--arch", "mlp-16", "--data", "digits", "--epochs", "2", "--lr", "0.01",
            "--hw", "noisy", "--out", str(out), "--json", "--threads", "1"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["history"]["epochs_done"] == 2 and doc["hardware"]["name"] == "noisy"
    assert doc["split"] == "train" and doc["n_train"] == len(load_digits("train"))
    assert doc["history"]["threads"] == 1                         # --threads is honoured while training
    m = load_model_file(out / "model.pt")                      # a plain digital model, weights-only loadable
    assert all(type(l) in (nn.Flatten, nn.Linear, nn.ReLU) for l in m)
    assert doc["test_accuracy_digital"] == pytest.approx(evaluate_accuracy(m, load_digits("test")))
    assert json.loads((out / "train.json").read_text())["test_accuracy_digital"] == doc["test_accuracy_digital"]
    assert main(args) == 0                                       # rerun: resumes, nothing left to do
    assert json.loads(capsys.readouterr().out)["history"]["resumed_from"] == 2


@pytest.mark.parametrize("argv, msg", [
    ([], "--arch: give exactly one of --arch"),
    (["--arch", "mlp-16", "--init", "x.pt"], "--arch: give exactly one of --arch"),
    (["--arch", "resnet"], "--arch: 'resnet' is not known"),
    (["--arch", "mlp-16", "--data", "digits:test"], "--data: split 'test' is not allowed for training"),
    (["--arch", "mlp-16", "--set", "adc.bits=4"], "--set: --set changes a hardware; give --hw"),
    (["--arch", "mlp-16", "--epochs", "0"], "--epochs: 0 is not allowed"),
    (["--arch", "mlp-16", "--lr", "0"], "--lr: 0.0 is not allowed; must be > 0"),
    (["--arch", "mlp-16", "--hw", "nope"], "--hw: unknown preset 'nope'"),
    (["--init", "missing.pt"], "--init: 'missing.pt' is neither a reference model name nor an existing file"),
])
def test_cli_train_errors(tmp_path, capsys, argv, msg):
    rc = main(["train", "--data", "digits", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.splitlines()[-1].startswith("memcim train: error: ")


def test_cli_train_warns_near_chance(tmp_path, capsys):
    """A learning rate too small to move the weights ends at about 1/10: one warning line on stderr."""
    args = ["train", "--arch", "mlp-16", "--data", "digits", "--epochs", "1", "--lr", "1e-7", "--json"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["test_accuracy_digital"] < 0.2 and doc["near_chance"]
    warn = [l for l in cap.err.splitlines() if "near chance" in l]
    assert len(warn) == 1 and warn[0].startswith("memcim train: warning: final test accuracy")
    assert main(["train", "--arch", "mlp-16", "--data", "digits", "--epochs", "5", "--lr", "0.01", "--batch-size", "32", "--json",
                 "--out", str(tmp_path / "b")]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["test_accuracy_digital"] > 0.8 and "near chance" not in cap.err


def test_cli_train_own_arrays_and_init(tmp_path, capsys):
    """--data X.npy,Y.npy trains on the user's arrays (accuracy on them); --init fine-tunes a model file."""
    import numpy as np

    tr = load_digits("train")
    np.save(tmp_path / "x.npy", tr.x.reshape(len(tr), 64).numpy())
    np.save(tmp_path / "y.npy", tr.y.numpy())
    assert main(["train", "--arch", "mlp-16", "--data", f"{tmp_path}/x.npy,{tmp_path}/y.npy", "--epochs", "5", "--batch-size", "32",
                 "--lr", "0.01", "--out", str(tmp_path / "own"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    m = load_model_file(tmp_path / "own" / "model.pt")
    x = tr.x.reshape(len(tr), 64)
    assert doc["accuracy_on"] == "train" and doc["test_accuracy_digital"] is None
    assert doc["train_accuracy_digital"] == pytest.approx(float((m(x).argmax(1) == tr.y).float().mean()))
    assert doc["train_accuracy_digital"] > 0.8
    assert main(["train", "--init", str(tmp_path / "own" / "model.pt"), "--data", f"{tmp_path}/x.npy,{tmp_path}/y.npy",
                 "--epochs", "1", "--lr", "0.001", "--out", str(tmp_path / "ft"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train_accuracy_digital"] > 0.8


@pytest.mark.parametrize("argv, msg", [
    (["evaluate", "--model", "m.pt", "--preset", "ideal"], "--preset is gone; use --hw"),
    (["evaluate", "--model", "m.pt", "--dataset", "digits"], "--dataset is gone; use --data"),
    (["evaluate", "--model", "m.pt", "--limit", "10"], "--limit is gone; use --data DATASET:SPLIT:N"),
    (["train", "--arch", "mlp-16", "--hardware-aware", "noisy"], "--hardware-aware is gone; use --hw"),
    (["train", "--arch", "mlp-16", "--limit", "100"], "--limit is gone; use --data DATASET:train:N"),
])
def test_old_flags_name_their_replacement(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_cli_train_normalize_round_trip(tmp_path, capsys):
    """A model trained with --normalize M,S and evaluated with the same flag scores what training reported."""
    assert main(["train", "--arch", "mlp-16", "--data", "digits", "--normalize", "0.5,0.25", "--epochs", "3",
                 "--lr", "0.01", "--batch-size", "32", "--out", str(tmp_path), "--json"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["normalize"] == [0.5, 0.25] and doc["input_range"] == [-2.0, 2.0]   # digits pixels span [0, 1]
    assert "input range [-2, 2]" in cap.err
    m = load_model_file(tmp_path / "model.pt")
    te = load_digits("test")
    truth = float((m((te.x - 0.5) / 0.25).argmax(1) == te.y).float().mean())
    assert doc["test_accuracy_digital"] == pytest.approx(truth) and truth > 0.8
    assert main(["evaluate", "--model", str(tmp_path / "model.pt"), "--data", "digits:test", "--normalize",
                 "0.5,0.25", "--hw", "ideal", "--chips", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["digital_accuracy"] == pytest.approx(truth)
