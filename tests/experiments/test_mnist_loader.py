"""The MNIST loaders of the experiments on small generated IDX (plain and gzipped) and npz
files, and their errors for missing or corrupt files."""

import gzip
import struct

import numpy as np
import pytest

from experiments._data import load_mnist, load_mnist_labeled


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
