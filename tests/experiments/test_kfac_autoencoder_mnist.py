"""The kfac_autoencoder experiment's MNIST loader on small generated IDX (plain and gzipped) and npz
files, and its errors for missing or corrupt files."""

import gzip
import struct

import numpy as np
import pytest

from experiments.kfac_autoencoder import load_mnist


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


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist_path"):
        load_mnist(str(tmp_path / "absent.npz"))
    bad_magic = tmp_path / "labels-idx1-ubyte"
    bad_magic.write_bytes(struct.pack(">II", 2049, 3) + bytes(3) + bytes(8))
    with pytest.raises(ValueError, match="magic 2049"):
        load_mnist(str(bad_magic))
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="too short"):
        load_mnist(str(short))
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes(_idx_bytes(_images())[:-7])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_mnist(str(truncated))
    bad_gz = tmp_path / "broken.gz"
    bad_gz.write_bytes(b"not gzip data at all")
    with pytest.raises(ValueError, match="not a readable IDX"):
        load_mnist(str(bad_gz))
    bad_npz = tmp_path / "broken.npz"
    bad_npz.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_mnist(str(bad_npz))
    wrong_key = tmp_path / "wrong.npz"
    np.savez(wrong_key, pixels=_images())
    with pytest.raises(ValueError, match="x_train"):
        load_mnist(str(wrong_key))
