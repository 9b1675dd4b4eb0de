"""Copy the weights of textgenrnn 2.0.0 (MIT, Max Woolf) from its sdist's HDF5 file into the npz
that `respax.evals.load_textgenrnn` reads, array for array (the CuDNN layout is kept; the loader
converts it). h5py is needed only here:

    uv run --no-project --with h5py --with numpy python \\
        pkgs/evals/scripts/textgenrnn_weights_to_npz.py textgenrnn/textgenrnn_weights.hdf5 \\
        pkgs/evals/src/respax/evals/_data/textgenrnn_weights.npz
"""

import sys

import h5py
import numpy as np


def main(src: str, dst: str) -> None:
    arrays = {}
    with h5py.File(src, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                # "rnn_1/rnn_1/kernel:0" -> "rnn_1/kernel"
                layer, _, leaf = name.split("/")
                arrays[f"{layer}/{leaf.split(':')[0]}"] = np.asarray(obj, np.float32)

        f.visititems(visit)
    np.savez_compressed(dst, **arrays)
    print(f"{len(arrays)} arrays, {sum(a.size for a in arrays.values()):,} parameters -> {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:])
