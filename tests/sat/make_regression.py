"""Regenerate tests/sat/data/regression.json: seeded instances with their exact counts, checked
against d4solver (bench group) and, up to 20 variables, brute force.

Usage: python tests/sat/make_regression.py  (needs `uv sync --group bench` for py_d4)
"""

import json
import pathlib
import sys

from respax import sat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
from counter_speed import d4_count  # noqa: E402


def build():
    insts = []
    for n, m in ((20, 60), (20, 85), (30, 90), (30, 120), (40, 120), (40, 160)):
        for seed in range(4):
            insts.append(sat.random_kcnf(3, n, m, seed=seed))
    for k, n, m in ((2, 20, 30), (4, 25, 120)):
        for seed in range(3):
            insts.append(sat.random_kcnf(k, n, m, seed=seed))
    insts += [sat.pigeonhole(p, h) for p, h in ((3, 3), (4, 3), (4, 4), (5, 4), (5, 5))]
    insts += [
        sat.grid_colouring(r, c, k) for r, c, k in ((2, 3, 3), (3, 3, 3), (3, 4, 3), (4, 4, 3))
    ]
    insts += [sat.sudoku(4, g, seed=s) for g, s in ((0, 0), (4, 1), (6, 2), (3, 3), (5, 4))]
    insts += [sat.random_kcnf(3, 25, 75, seed=s) for s in (10, 11, 12)]
    insts += [sat.cellular_automaton(r, 8, 4, seed=s) for r in (9, 30, 49) for s in range(2)]
    out = []
    for inst in insts:
        ours = sat.count(inst.cnf).count
        d4 = d4_count(inst.cnf)
        assert ours == d4, (inst.name, ours, d4)
        if inst.cnf.num_vars <= 20:
            assert ours == sat.brute_force_count(inst.cnf), inst.name
        out.append({"name": inst.name, "count": str(ours), "dimacs": sat.format_dimacs(inst.cnf)})
    return out


if __name__ == "__main__":
    data = build()
    path = pathlib.Path(__file__).resolve().parent / "data" / "regression.json"
    path.write_text(json.dumps(data, indent=0) + "\n")
    print(f"{len(data)} instances -> {path}")
