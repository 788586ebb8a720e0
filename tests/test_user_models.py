"""Any user's model through ``memcim evaluate``: a plain MNIST MLP saved with torch.save, a custom
class loaded with --import FILE.py --trust-model-file, inputs normalised with --normalize, a
reshaped input layout (--input-shape) and the user's own arrays (with and without labels).

Every accuracy the CLI reports is checked against one computed here, directly with torch."""
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from memcim.cli import main
from memcim.data.datasets import load_dataset
from memcim.nn.loading import fit_input, import_user_modules, load_model, parse_input_shape

MEAN, STD = 0.1307, 0.3081


def _fit(model, x, y, epochs=3, seed=0, lr=1e-3):
    """A few epochs of Adam on (x, y); the test's own loop, independent of memcim.nn.train."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def mnist_small():
    tr = load_dataset("mnist", "train", limit=3000)
    te = load_dataset("mnist", "test", limit=500)
    return tr, te


@pytest.fixture(scope="module")
def plain_mlp(mnist_small, tmp_path_factory):
    """Exactly the issue's model, trained on 3000 flattened MNIST images (normalised or not)."""
    tr, _ = mnist_small
    out = {}
    for norm in (False, True):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        x = tr.x.flatten(1)
        _fit(m, (x - MEAN) / STD if norm else x, tr.y)
        path = tmp_path_factory.mktemp("mlp") / "m.pt"
        torch.save(m, path)
        out[norm] = (m, path)
    return out


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _evaluate(capsys, *argv):
    rc = main(["evaluate", *argv, "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out), cap.err


def test_plain_mnist_mlp_evaluates(plain_mlp, mnist_small, capsys):
    model, path = plain_mlp[False]
    _, te = mnist_small
    truth = _acc(model, te.x.flatten(1), te.y)
    assert truth > 0.8                                            # well above chance (0.1)
    doc, err = _evaluate(capsys, "--model", str(path), "--data", "mnist:test:500", "--hw", "ideal",
                         "--chips", "2")
    assert doc["digital_accuracy"] == pytest.approx(truth, abs=1e-9)
    r = doc["results"][0]
    assert r["hardware"] == "ideal" and r["accuracy"]["mean"] == pytest.approx(truth, abs=0.005)
    assert doc["input_range"] == [0.0, pytest.approx(float(te.x.max()))]
    assert "input range [0, " in err


def test_normalize_is_what_the_model_was_trained_on(plain_mlp, mnist_small, capsys):
    model, path = plain_mlp[True]
    _, te = mnist_small
    truth = _acc(model, (te.x.flatten(1) - MEAN) / STD, te.y)
    raw = _acc(model, te.x.flatten(1), te.y)
    assert truth > 0.8 and truth > raw + 0.02                     # the raw pixels are the wrong inputs
    doc, err = _evaluate(capsys, "--model", str(path), "--data", "mnist:test:500", "--hw", "ideal",
                         "--chips", "1", "--normalize", f"{MEAN},{STD}")
    assert doc["digital_accuracy"] == pytest.approx(truth, abs=1e-9)
    assert doc["normalize"] == [MEAN, STD]
    lo, hi = doc["input_range"]
    assert lo == pytest.approx(-MEAN / STD, rel=1e-5) and hi == pytest.approx((float(te.x.max()) - MEAN) / STD, rel=1e-5)
    assert f"input range [{-MEAN / STD:.4g}" in err
    doc, _ = _evaluate(capsys, "--model", str(path), "--data", "mnist:test:500", "--hw", "ideal", "--chips", "1")
    assert doc["digital_accuracy"] == pytest.approx(raw, abs=1e-9)


NET_SRC = textwrap.dedent('''
    import torch
    from torch import nn

    class TwoLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))
''')


def test_custom_class_with_import_file(mnist_small, tmp_path, capsys, monkeypatch):
    tr, te = mnist_small
    src = tmp_path / "usernet_a.py"
    src.write_text(NET_SRC)
    (mod,) = import_user_modules([str(src)])
    torch.manual_seed(0)
    net = _fit(mod.TwoLayer(), tr.x, tr.y, epochs=2)
    torch.save(net, tmp_path / "net.pt")
    truth = _acc(net, te.x, te.y)
    monkeypatch.delitem(sys.modules, "usernet_a")                 # a fresh process: the class is unknown
    base = ["evaluate", "--model", str(tmp_path / "net.pt"), "--data", "mnist:test:500", "--hw", "ideal",
            "--chips", "1"]
    for extra in ([], ["--trust-model-file"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "usernet_a" in err
        assert "--import" in err and "--trust-model-file" in err
    doc, _ = _evaluate(capsys, *base[1:], "--import", str(src), "--trust-model-file")
    assert doc["digital_accuracy"] == pytest.approx(truth, abs=1e-9) and truth > 0.8
    assert main(base + ["--import", str(tmp_path / "nope.py"), "--trust-model-file"]) == 2
    assert "--import: file not found" in capsys.readouterr().err


def test_class_pickled_from_a_script_main(tmp_path, monkeypatch):
    """A class defined in the training script is pickled as __main__.Name; --import of that script's
    module (here a file defining the same class) resolves it."""
    src = tmp_path / "usernet_b.py"
    src.write_text(NET_SRC)
    (mod,) = import_user_modules([str(src)])
    cls = mod.TwoLayer
    monkeypatch.setattr(cls, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "TwoLayer", cls, raising=False)
    torch.manual_seed(1)
    net = cls()
    torch.save(net, tmp_path / "net.pt")
    monkeypatch.delattr(sys.modules["__main__"], "TwoLayer")
    monkeypatch.delitem(sys.modules, "usernet_b")
    with pytest.raises(ValueError, match=r"__main__\.TwoLayer is not importable.*--import.*--trust-model-file"):
        load_model(tmp_path / "net.pt", trust_model_file=True)
    loaded = load_model(tmp_path / "net.pt", trust_model_file=True, import_modules=[str(src)])
    x = torch.rand(3, 784)
    assert torch.equal(loaded(x), net(x))


def test_fit_input_flattens_mlps_and_reshapes_on_request():
    mlp = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    fitted = fit_input(mlp, (1, 28, 28))
    assert type(fitted) is nn.Sequential and [type(m) for m in fitted] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert fitted[1] is mlp[0]                                    # the same layers, one flat stack
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(fitted(x), mlp(x.reshape(4, 784)))
    assert fit_input(mlp, (784,)) is mlp                          # already fits: unchanged
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 10))
    shaped = fit_input(cnn, (64,), input_shape="1,8,8")
    flat = torch.rand(5, 64)
    assert torch.equal(shaped(flat), cnn(flat.reshape(5, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"^input_shape: 1,9,9 holds 81 values but a sample .* \(64,\)"):
        fit_input(cnn, (64,), input_shape="1,9,9")
    with pytest.raises(ValueError, match=r"^input_shape: the model does not accept samples of shape \(1, 28, 28\)"):
        fit_input(nn.Sequential(nn.Linear(100, 10)), (1, 28, 28))
    with pytest.raises(ValueError, match="^input_shape: '1,x' is not allowed"):
        parse_input_shape("1,x")
    assert parse_input_shape((3, 32, 32)) == (3, 32, 32)


def test_own_arrays_input_shape_and_unlabelled(tmp_path, capsys):
    te = load_dataset("digits", "test", limit=120)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(64, 10))
    _fit(cnn, load_dataset("digits", "train").x, load_dataset("digits", "train").y, epochs=10, lr=1e-2)
    torch.save(cnn, tmp_path / "cnn.pt")
    np.save(tmp_path / "x.npy", te.x.reshape(len(te), 64).numpy())    # the user's own flat arrays
    np.save(tmp_path / "y.npy", te.y.numpy())
    truth = _acc(cnn, te.x, te.y)
    data = f"{tmp_path}/x.npy,{tmp_path}/y.npy"
    doc, _ = _evaluate(capsys, "--model", str(tmp_path / "cnn.pt"), "--data", data, "--input-shape", "1,8,8",
                       "--hw", "ideal", "--chips", "1")
    assert doc["digital_accuracy"] == pytest.approx(truth, abs=1e-9) and truth > 0.5
    assert main(["evaluate", "--model", str(tmp_path / "cnn.pt"), "--data", data, "--chips", "1"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "cnn.pt"), "--data", data, "--input-shape", "2,8,8"]) == 2
    assert "--input-shape: 2,8,8 holds 128 values" in capsys.readouterr().err
    # inputs without labels: output MSE, no accuracy
    args = ["evaluate", "--model", str(tmp_path / "cnn.pt"), "--data", f"{tmp_path}/x.npy", "--input-shape",
            "1,8,8", "--hw", "noisy", "--chips", "2"]
    doc, _ = _evaluate(capsys, *args[1:])
    r = doc["results"][0]
    assert not doc["labelled"] and doc["digital_accuracy"] is None and r["accuracy"] is None
    assert r["mse"]["mean"] > 0 and r["hardware"] == "noisy"
    assert main(args[:-1] + ["1"]) == 0
    out = capsys.readouterr().out
    assert "no labels" in out and "%" not in out and "nan" not in out
