"""The experiments' data, in one module (nothing is downloaded).

- scikit-learn's 8x8 digits (`load_digits`), which ships with scikit-learn;
- labelled 28x28 images from a path the user passes (`mnist_path=...`; opt-in only, never chosen
  by what a machine has installed): a folder holding the four standard IDX files
  `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
  `t10k-labels-idx1-ubyte` (each raw or gzipped, `.gz`; the layout of MNIST's own files and of
  Debian's `dataset-fashion-mnist` package, `/usr/share/datasets/fashion-mnist/`), the training
  image file itself with the other three beside it, or an npz in the common `mnist.npz` layout
  (`x_train`, `y_train`, `x_test`, `y_test`). `dataset_name` names what the path holds
  (`"mnist"`, `"fashion-mnist"` or the folder's name) for metrics.json and the claims.
"""

import gzip
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

_IMAGES, _LABELS = 2051, 2049
# The standard IDX file names, by the key each array gets.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def load_digits(*, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: images in [0, 1] (the 0-16 pixel counts / 16) as float64
    (1797, 64), labels as int32 (1797,); shuffled by `np.random.default_rng(seed).permutation`
    when `seed` is given.

    Example:
        >>> x, y = load_digits(seed=0)
        >>> x.shape, y.dtype.name, float(x.max())
        ((1797, 64), 'int32', 1.0)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    if seed is not None:
        perm = np.random.default_rng(seed).permutation(len(x))
        x, y = x[perm], y[perm]
    # Division by 16 is exact in binary floating point, so scaled statistics are exact too.
    return x / 16.0, y.astype(np.int32)


def dataset_name(path: str) -> str:
    """The name of the data at a user path: `"fashion-mnist"` or `"mnist"` when the folder's (or,
    for an npz, the file's) name says so as a word (`fashion-mnist`, `fashion_mnist`, `mnist`,
    `mnist.npz`; not `kmnist`), otherwise the folder's name. Recorded in metrics.json; claims
    about the papers' MNIST numbers are judged only for `"mnist"`.

    Example:
        >>> dataset_name("/usr/share/datasets/fashion-mnist"), dataset_name("/data/mnist.npz")
        ('fashion-mnist', 'mnist')
        >>> dataset_name("/data/kmnist/train-images-idx3-ubyte.gz")
        'kmnist'
    """
    p = Path(path)
    is_file = p.is_file() or (not p.is_dir() and (p.suffix in (".npz", ".gz") or "idx" in p.name))
    folder = p.parent if is_file else p
    candidates = [p.stem] if p.suffix == ".npz" else []
    candidates.append(folder.name)
    for candidate in candidates:
        words = set(re.split(r"[^a-z0-9]+", candidate.lower()))
        if words & {"fashion", "fashionmnist"}:
            return "fashion-mnist"
        if "mnist" in words:
            return "mnist"
    return folder.name or str(folder)


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
    if not isinstance(path, str | Path) or not str(path):
        # Path("") is the working directory: an unset path must never read whatever is there.
        raise ValueError(
            f"{name} is empty; pass a folder holding the IDX files, an IDX file or an npz file"
        )
    p = Path(path)
    if not p.is_file() and not p.is_dir():
        raise FileNotFoundError(
            f"{name}={path!r} does not exist; pass a folder holding the IDX files, an IDX file "
            "or an npz file"
        )
    return p


def _idx_in_folder(folder: Path, name: str, keys: tuple[str, ...]) -> dict[str, Path]:
    """The IDX file of each key in `folder`, raw or gzipped (the raw one when both exist)."""
    found, missing = {}, []
    for key in keys:
        stem = IDX_FILES[key]
        options = [folder / stem, folder / (stem + ".gz")]
        hit = next((f for f in options if f.is_file()), None)
        if hit is None:
            missing.append(stem + "[.gz]")
        else:
            found[key] = hit
    if missing:
        holds = sorted(f.name for f in folder.iterdir())
        shown = ", ".join(holds[:12]) + (", ..." if len(holds) > 12 else "")
        raise FileNotFoundError(
            f"{name}={str(folder)!r}: the folder lacks {', '.join(missing)} (it holds "
            f"{shown or 'no files'}); expected the IDX files {', '.join(IDX_FILES.values())}, "
            "each raw or .gz"
        )
    return found


def load_mnist(path: str, name: str = "mnist_path") -> np.ndarray:
    """MNIST-layout training images in [0, 1], shape (n, rows * cols): from a folder holding
    `train-images-idx3-ubyte[.gz]`, from an IDX image file (optionally gzipped), or from an npz
    file holding `x_train` (or `images`).

    Raises:
        FileNotFoundError: `path` does not exist, or the folder lacks the training image file.
        ValueError: the file is not a readable IDX image file or npz with those arrays (bad magic
            number, truncated header or pixel data, missing key, corrupt gzip/zip).
    """
    p = _existing(path, name)
    if p.is_dir():
        return _unit(_read_idx(_idx_in_folder(p, name, ("x_train",))["x_train"], _IMAGES, name))
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

    `path` is one of: a folder holding the four standard IDX files (`IDX_FILES`, each raw or
    gzipped), as MNIST's own files and Debian's `dataset-fashion-mnist` package
    (`/usr/share/datasets/fashion-mnist/`) lay them out; the training image IDX file
    `.../train-images-idx3-ubyte[.gz]`, with the other three next to it under the standard
    names and the same suffix; or an npz with those four arrays (the `mnist.npz` layout).

    Raises:
        FileNotFoundError: `path` or a needed file does not exist (the error names each missing
            file).
        ValueError: unreadable or inconsistent files (bad magic, truncated, missing npz key,
            different image and label counts).
    """
    p = _existing(path, name)
    if p.is_dir():
        files = _idx_in_folder(p, name, tuple(IDX_FILES))
        out = {
            k: _read_idx(f, _IMAGES if k.startswith("x") else _LABELS, name)
            for k, f in files.items()
        }
    elif p.suffix == ".npz":
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
