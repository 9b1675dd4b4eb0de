"""`python -m experiments list | run NAME | reproduce` (see experiments/README.md)."""

import os
import sys

# Plots are written to files; no display is needed (or wanted) on a headless machine.
os.environ.setdefault("MPLBACKEND", "Agg")

from experiments._runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
