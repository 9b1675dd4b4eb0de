"""MNIST from a user-supplied file (nothing is downloaded): IDX files (optionally gzipped) or an
npz in the common `mnist.npz` layout (`x_train`, `y_train`, `x_test`, `y_test`)."""

import gzip
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

_IMAGES, _LABELS = 2051, 2049


def _read_idx(path: Path, magic: int, name: str) -> np.ndarray:
    """The array of an IDX file: images (magic 2051) as (n, rows * cols) uint8, labels (2049)
    as (n,) uint8."""
    try:
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{name}={str(path)!r}: not a readable IDX file ({err})") from err
    header = 16 if magic == _IMAGES else 8
    if len(raw) < header:
        raise ValueError(f"{name}={str(path)!r}: {len(raw)} bytes, too short for an IDX header")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        kind = "image" if magic == _IMAGES else "label"
        raise ValueError(
            f"{name}={str(path)!r}: not an IDX {kind} file (magic {found}, expected {magic})"
        )
    dims = struct.unpack(">" + "I" * (header // 4 - 1), raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(
            f"{name}={str(path)!r}: header says {'x'.join(map(str, dims))} values, file holds "
            f"{len(raw) - header} bytes of data (truncated or corrupt)"
        )
    data = np.frombuffer(raw[header:], np.uint8)
    return data.reshape(dims[0], -1) if magic == _IMAGES else data


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(x.shape[0], -1)
    return x / 255.0 if x.size and x.max() > 1.0 else x


def _npz(path: Path, name: str, keys: tuple[str, ...]) -> dict:
    try:
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in keys if k in data} | {"_files": data.files}
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{name}={str(path)!r}: not a readable npz file ({err})") from err


def _existing(path: str, name: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}={path!r} does not exist; pass an IDX or npz file")
    return p


def load_mnist(path: str, name: str = "mnist_path") -> np.ndarray:
    """MNIST images in [0, 1], shape (n, rows * cols), from an IDX image file (optionally gzipped)
    or an npz file holding `x_train` (or `images`).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a readable IDX image file or npz with those arrays (bad magic
            number, truncated header or pixel data, missing key, corrupt gzip/zip).
    """
    p = _existing(path, name)
    if p.suffix != ".npz":
        return _unit(_read_idx(p, _IMAGES, name))
    data = _npz(p, name, ("x_train", "images"))
    x = data.get("x_train", data.get("images"))
    if x is None:
        raise ValueError(
            f"{name}={path!r}: npz holds {sorted(data['_files'])}, expected an array named "
            "'x_train' or 'images'"
        )
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name}={path!r}: expected (n, 28, 28) images, got {x.shape}")
    return _unit(x)


def load_mnist_labeled(path: str, name: str = "mnist_path") -> dict[str, np.ndarray]:
    """Labelled MNIST: `{"x_train", "y_train", "x_test", "y_test"}`, images in [0, 1] with shape
    (n, rows * cols) and int32 labels.

    `path` is either an npz with those four arrays (the `mnist.npz` layout), or the training
    image IDX file `.../train-images-idx3-ubyte[.gz]`, with the other three files next to it
    under the standard names (`train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
    `t10k-labels-idx1-ubyte`, each with the same suffix).

    Raises:
        FileNotFoundError: a needed file does not exist.
        ValueError: unreadable or inconsistent files (bad magic, truncated, missing npz key,
            different image and label counts).
    """
    p = _existing(path, name)
    if p.suffix == ".npz":
        keys = ("x_train", "y_train", "x_test", "y_test")
        data = _npz(p, name, keys)
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(
                f"{name}={path!r}: npz holds {sorted(data['_files'])}, expected arrays "
                f"{list(keys)} (missing {missing})"
            )
        out = {k: data[k] for k in keys}
    else:
        if not re.search(r"train-images[.-]idx3-ubyte", p.name):
            raise ValueError(
                f"{name}={path!r}: expected the training image file "
                "'train-images-idx3-ubyte' (optionally .gz) or an npz"
            )
        sibling = lambda split, kind, dim: p.with_name(
            p.name.replace("train-images", f"{split}-{kind}").replace("idx3", dim)
        )
        out = {}
        for split, key in (("train", "train"), ("t10k", "test")):
            images = sibling(split, "images", "idx3")
            labels = sibling(split, "labels", "idx1")
            for f in (images, labels):
                _existing(str(f), name + f" ({split} {f.name})")
            out[f"x_{key}"] = _read_idx(images, _IMAGES, name)
            out[f"y_{key}"] = _read_idx(labels, _LABELS, name)
    for split in ("train", "test"):
        x, y = out[f"x_{split}"], out[f"y_{split}"]
        if x.shape[0] != np.shape(y)[0] or x.shape[0] == 0:
            raise ValueError(
                f"{name}={path!r}: {x.shape[0]} {split} images but {np.shape(y)[0]} labels"
            )
        out[f"x_{split}"] = _unit(x)
        out[f"y_{split}"] = np.asarray(y).astype(np.int32).reshape(-1)
    return out
