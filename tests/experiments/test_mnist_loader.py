"""The data module of the experiments on small generated IDX (plain and gzipped, single files
and folders of the four standard files) and npz files, their errors for missing or corrupt
files, the dataset's name in metrics.json and the claims, and the digits loader."""

import gzip
import struct

import numpy as np
import pytest

from experiments._data import IDX_FILES, dataset_name, load_digits, load_mnist, load_mnist_labeled


def _images(n=3, rows=4, cols=5):
    return np.arange(n * rows * cols, dtype=np.uint8).reshape(n, rows, cols) * 4


def _idx_bytes(images):
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes()


def test_idx_plain_and_gzip(tmp_path):
    images = _images()
    expect = images.reshape(3, 20).astype(np.float32) / 255.0
    plain = tmp_path / "train-images-idx3-ubyte"
    plain.write_bytes(_idx_bytes(images))
    np.testing.assert_array_equal(load_mnist(str(plain)), expect)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(images)))
    got = load_mnist(str(gz))
    assert got.shape == (3, 20) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expect)


def test_npz_uint8_and_unit_float(tmp_path):
    images = _images()
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=images, y_train=np.zeros(3, np.uint8))
    np.testing.assert_array_equal(load_mnist(str(path)), images.reshape(3, 20) / np.float32(255))
    unit = (images / 255.0).astype(np.float32)
    path = tmp_path / "images.npz"
    np.savez(path, images=unit)
    np.testing.assert_array_equal(load_mnist(str(path)), unit.reshape(3, 20))


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("labels-idx1-ubyte", struct.pack(">II", 2049, 3) + bytes(11), "magic 2049"),
        ("short-idx3-ubyte", b"\x00\x00\x08", "too short"),
        ("truncated-idx3-ubyte", _idx_bytes(_images())[:-7], "truncated or corrupt"),
        ("broken.gz", b"not gzip data at all", "not a readable IDX"),
        ("broken.npz", b"PK\x03\x04 not a zip", "not a readable npz"),
    ],
)
def test_corrupt_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_mnist(str(path))


def test_missing_file_and_wrong_npz_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist_path"):
        load_mnist(str(tmp_path / "absent.npz"))
    wrong_key = tmp_path / "wrong.npz"
    np.savez(wrong_key, pixels=_images())
    with pytest.raises(ValueError, match="x_train"):
        load_mnist(str(wrong_key))


def _labels_bytes(labels):
    return struct.pack(">II", 2049, len(labels)) + np.asarray(labels, np.uint8).tobytes()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_labeled_idx_directory(tmp_path, suffix):
    pack = gzip.compress if suffix else (lambda b: b)
    train, test = _images(3), _images(2, 4, 5)
    files = {
        "train-images-idx3-ubyte": _idx_bytes(train),
        "train-labels-idx1-ubyte": _labels_bytes([7, 1, 9]),
        "t10k-images-idx3-ubyte": _idx_bytes(test),
        "t10k-labels-idx1-ubyte": _labels_bytes([4, 2]),
    }
    for name, data in files.items():
        (tmp_path / (name + suffix)).write_bytes(pack(data))
    got = load_mnist_labeled(str(tmp_path / ("train-images-idx3-ubyte" + suffix)))
    np.testing.assert_array_equal(got["x_train"], train.reshape(3, 20) / np.float32(255))
    np.testing.assert_array_equal(got["x_test"], test.reshape(2, 20) / np.float32(255))
    np.testing.assert_array_equal(got["y_train"], [7, 1, 9])
    np.testing.assert_array_equal(got["y_test"], [4, 2])
    assert got["y_train"].dtype == np.int32 and got["x_train"].dtype == np.float32
    # A missing sibling or a label count that does not match is named in the error.
    (tmp_path / ("t10k-labels-idx1-ubyte" + suffix)).write_bytes(pack(_labels_bytes([4])))
    with pytest.raises(ValueError, match="2 test images but 1 labels"):
        load_mnist_labeled(str(tmp_path / ("train-images-idx3-ubyte" + suffix)))
    (tmp_path / ("t10k-labels-idx1-ubyte" + suffix)).unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_mnist_labeled(str(tmp_path / ("train-images-idx3-ubyte" + suffix)))


def test_labeled_npz_and_errors(tmp_path):
    path = tmp_path / "mnist.npz"
    x = _images(3)
    np.savez(path, x_train=x, y_train=np.array([1, 2, 3]), x_test=x[:1], y_test=np.array([5]))
    got = load_mnist_labeled(str(path))
    np.testing.assert_array_equal(got["x_train"], x.reshape(3, 20) / np.float32(255))
    np.testing.assert_array_equal(got["y_test"], [5])
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=x, y_train=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="missing \\['x_test', 'y_test'\\]"):
        load_mnist_labeled(str(partial))
    other = tmp_path / "digits-idx3-ubyte"
    other.write_bytes(_idx_bytes(x))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_mnist_labeled(str(other))


@pytest.mark.slow
def test_bilevel_smoke_on_a_generated_mnist_file(tmp_path):
    """The bilevel experiment's MNIST path end to end on a small generated mnist.npz (28x28
    images whose class is the bright row): a smoke run completes and reports 784-pixel images."""
    import dataclasses

    from experiments import _registry
    from experiments._runner import run_experiment

    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        x[np.arange(n), 2 * y + 4, :] = 255
        return x, y.astype(np.uint8)

    (xtr, ytr), (xte, yte) = split(400), split(100)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    exp = _registry.load("bilevel_implicit_bias")
    cfg = dataclasses.replace(exp.scales["smoke"], mnist_path=str(path), quad_outer_steps=2)
    out = tmp_path / "run"
    metrics = run_experiment(
        exp, cfg=cfg, scale="smoke", seed=0, overrides={}, out_dir=out, checkpoint_every_s=0.0
    )
    assert metrics["claims"]
    report = (out / "report.md").read_text()
    assert "Data: MNIST. Inner model: tanh MLP 784-" in report
    assert metrics["metrics"]["dataset"] == "mnist"


def _write_idx_folder(folder, suffix=".gz", n_train=3, n_test=2, rows=28, cols=28, skip=()):
    """The four standard IDX files in `folder`, as Debian's dataset-fashion-mnist installs them
    (gzipped) or raw; returns the arrays written."""
    pack = gzip.compress if suffix == ".gz" else (lambda b: b)
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, rows, cols)).astype(np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, rows, cols)).astype(np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        if stem in skip:
            continue
        data = _idx_bytes(arrays[key]) if key.startswith("x") else _labels_bytes(arrays[key])
        (folder / (stem + suffix)).write_bytes(pack(data))
    return arrays


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_folder_of_idx_files(tmp_path, suffix):
    folder = tmp_path / "fashion-mnist"
    arrays = _write_idx_folder(folder, suffix)
    got = load_mnist_labeled(str(folder))
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        np.testing.assert_array_equal(got[f"x_{split}"], x.reshape(len(x), -1) / np.float32(255))
        np.testing.assert_array_equal(got[f"y_{split}"], arrays[f"y_{split}"].astype(np.int32))
    assert got["x_train"].shape == (3, 784) and got["y_test"].dtype == np.int32
    images = load_mnist(str(folder))
    np.testing.assert_array_equal(images, got["x_train"])
    assert dataset_name(str(folder)) == "fashion-mnist"


def test_folder_mixing_raw_and_gzipped_files(tmp_path):
    folder = tmp_path / "mnist"
    arrays = _write_idx_folder(folder, ".gz", skip=("t10k-images-idx3-ubyte",))
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(arrays["x_test"]))
    got = load_mnist_labeled(str(folder))
    np.testing.assert_array_equal(got["x_test"], arrays["x_test"].reshape(2, -1) / np.float32(255))


def test_folder_names_every_missing_file(tmp_path):
    folder = tmp_path / "data"
    _write_idx_folder(folder, ".gz", skip=("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"))
    with pytest.raises(FileNotFoundError) as err:
        load_mnist_labeled(str(folder))
    message = str(err.value)
    assert "lacks train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz]" in message
    assert "t10k-labels" not in message.split("(it holds")[0]  # present files are not "missing"
    assert "train-images-idx3-ubyte.gz" in message  # what the folder does hold is listed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="lacks train-images-idx3-ubyte\\[.gz\\]"):
        load_mnist(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist_labeled(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="mnist_path is empty"):
        load_mnist_labeled("")


@pytest.mark.parametrize(
    "path, name",
    [
        ("/usr/share/datasets/fashion-mnist", "fashion-mnist"),
        ("/data/Fashion_MNIST/train-images-idx3-ubyte.gz", "fashion-mnist"),
        ("/data/mnist", "mnist"),
        ("/data/mnist.npz", "mnist"),
        ("/data/MNIST/raw/train-images-idx3-ubyte", "raw"),
        ("/data/kmnist/train-images-idx3-ubyte", "kmnist"),
        ("/data/digits28/data.npz", "digits28"),
    ],
)
def test_dataset_name(path, name):
    assert dataset_name(path) == name


def test_load_digits_is_sklearns_digits_scaled_and_shuffled():
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    got_x, got_y = load_digits()
    np.testing.assert_array_equal(got_x, x / 16.0)
    np.testing.assert_array_equal(got_y, y)
    perm = np.random.default_rng(3).permutation(len(x))
    shuffled_x, shuffled_y = load_digits(seed=3)
    np.testing.assert_array_equal(shuffled_x, x[perm] / 16.0)
    np.testing.assert_array_equal(shuffled_y, y[perm])
    assert shuffled_y.dtype == np.int32 and 0.0 <= shuffled_x.min() and shuffled_x.max() == 1.0


def test_user_data_is_opt_in_only():
    """No scale of any experiment reads user data unless the command line passes a path."""
    from experiments import _registry

    for exp_name in ("bilevel_implicit_bias", "kfac_autoencoder"):
        exp = _registry.load(exp_name)
        for scale, cfg in exp.scales.items():
            assert cfg.mnist_path == "", (exp_name, scale)


@pytest.mark.slow
def test_bilevel_smoke_on_a_fashion_mnist_folder(tmp_path):
    """A folder of gzipped IDX files named like Debian's package: the dataset's name goes into
    metrics.json and the claims that compare with Table 3's MNIST numbers are null with a
    reason; the other claims are unaffected."""
    import dataclasses
    import json

    from experiments import _registry
    from experiments._runner import run_experiment

    folder = tmp_path / "fashion-mnist"
    _write_idx_folder(folder, ".gz", n_train=320, n_test=40)
    exp = _registry.load("bilevel_implicit_bias")
    cfg = dataclasses.replace(
        exp.scales["smoke"], mnist_path=str(folder), quad_outer_steps=2, train_size=300
    )
    out = tmp_path / "run"
    run_experiment(
        exp, cfg=cfg, scale="smoke", seed=0, overrides={}, out_dir=out, checkpoint_every_s=0.0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["dataset"] == "fashion-mnist"
    table3 = [c for c in metrics["claims"] if c["claim"].startswith("distillation")]
    assert table3 and all(c["holds"] is None for c in table3)
    assert all("used fashion-mnist" in c["reason"] for c in table3)
    others = [c for c in metrics["claims"] if not c["claim"].startswith("distillation")]
    assert others and not any("fashion" in c["reason"] for c in others)
    assert "Data: Fashion-MNIST. Inner model: tanh MLP 784-" in (out / "report.md").read_text()


@pytest.mark.slow
def test_kfac_autoencoder_on_a_fashion_mnist_folder(tmp_path):
    import dataclasses
    import json

    from experiments import _registry
    from experiments._runner import run_experiment

    folder = tmp_path / "fashion-mnist"
    _write_idx_folder(folder, "", n_train=64, n_test=2)
    exp = _registry.load("kfac_autoencoder")
    cfg = dataclasses.replace(exp.scales["smoke"], dataset="mnist", mnist_path=str(folder))
    out = tmp_path / "run"
    run_experiment(
        exp, cfg=cfg, scale="smoke", seed=0, overrides={}, out_dir=out, checkpoint_every_s=0.0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["dataset"] == "fashion-mnist"
    assert metrics["metrics"]["architecture"][0] == 784
    assert all(
        c["holds"] is None and "used fashion-mnist" in c["reason"] for c in metrics["claims"]
    )


def test_docstring_examples():
    import doctest

    from experiments import _data

    result = doctest.testmod(_data, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 3
