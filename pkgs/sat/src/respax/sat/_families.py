"""Seeded formula families: random k-CNF, pigeonhole, grid colouring, sudoku, and elementary
cellular-automaton reversal (Neuro#'s `cell(R, n, r)`), with per-variable annotations."""

import dataclasses
from collections.abc import Callable

import numpy as np
from jaxtyping import Float

from ._cnf import CNF


@dataclasses.dataclass(frozen=True)
class Instance:
    """A generated formula with its annotations.

    Attributes:
        cnf: the formula.
        name: e.g. "cell(9,20,20)#3".
        time_step: per variable, its time step in the unrolled system divided by the number of
            steps (0 where the family has no time; Neuro#'s grid "time" feature).
    """

    cnf: CNF
    name: str
    time_step: Float[np.ndarray, " n"]


def _signed_rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def random_kcnf(k: int, n: int, m: int, *, seed: int) -> Instance:
    """Uniform random k-CNF: m clauses of k distinct variables with random signs.

    Example:
        >>> random_kcnf(3, 10, 20, seed=0).cnf.num_clauses
        20
    """
    if not (1 <= k <= n):
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    rng = _signed_rng(seed)
    vs = np.argsort(rng.random((m, n)), axis=1)[:, :k] + 1
    signs = rng.choice([-1, 1], size=(m, k))
    cnf = CNF.from_clauses((vs * signs).tolist(), num_vars=n)
    return Instance(cnf, f"rand{k}({n},{m})#{seed}", np.zeros(n))


def pigeonhole(pigeons: int, holes: int) -> Instance:
    """Each pigeon in some hole, no two pigeons share a hole (UNSAT when pigeons > holes).

    Example:
        >>> pigeonhole(3, 3).cnf.num_vars
        9
    """
    var = lambda p, h: p * holes + h + 1  # noqa: E731
    cls = [[var(p, h) for h in range(holes)] for p in range(pigeons)]
    cls += [
        [-var(p, h), -var(q, h)]
        for h in range(holes)
        for p in range(pigeons)
        for q in range(p + 1, pigeons)
    ]
    cnf = CNF.from_clauses(cls, num_vars=pigeons * holes)
    return Instance(cnf, f"php({pigeons},{holes})", np.zeros(cnf.num_vars))


def grid_colouring(rows: int, cols: int, colours: int = 3) -> Instance:
    """Proper `colours`-colourings of the rows x cols grid graph (direct encoding, exactly one
    colour per vertex).

    Example:
        >>> grid_colouring(2, 2, 3).cnf.num_vars
        12
    """
    var = lambda r, c, k: (r * cols + c) * colours + k + 1  # noqa: E731
    cls = []
    for r in range(rows):
        for c in range(cols):
            cls.append([var(r, c, k) for k in range(colours)])
            cls += [
                [-var(r, c, a), -var(r, c, b)]
                for a in range(colours)
                for b in range(a + 1, colours)
            ]
            for dr, dc in ((0, 1), (1, 0)):
                if r + dr < rows and c + dc < cols:
                    cls += [[-var(r, c, k), -var(r + dr, c + dc, k)] for k in range(colours)]
    cnf = CNF.from_clauses(cls, num_vars=rows * cols * colours)
    return Instance(cnf, f"colour({rows}x{cols},{colours})", np.zeros(cnf.num_vars))


def sudoku(size: int = 9, givens: int = 25, *, seed: int) -> Instance:
    """A size x size sudoku (size = b*b) with `givens` cells of a random solution fixed (direct
    encoding as in Neuro#'s sampler); its count = the number of completions.

    Example:
        >>> sudoku(4, 6, seed=0).cnf.num_vars
        64
    """
    b = int(round(size**0.5))
    if b * b != size:
        raise ValueError(f"size must be a square (4, 9, 16, ...), got {size}")
    if not 0 <= givens <= size * size:
        raise ValueError(f"givens must be in 0..{size * size}, got {givens}")
    rng = _signed_rng(seed)
    base = np.array([[(b * (r % b) + r // b + c) % size for c in range(size)] for r in range(size)])
    perm = lambda: np.concatenate([g * b + rng.permutation(b) for g in rng.permutation(b)])  # noqa: E731
    sol = rng.permutation(size)[base[perm()][:, perm()]]
    var = lambda r, c, d: (r * size + c) * size + d + 1  # noqa: E731
    cls = []
    for r in range(size):
        for c in range(size):
            cls.append([var(r, c, d) for d in range(size)])
            cls += [[-var(r, c, d), -var(r, c, e)] for d in range(size) for e in range(d + 1, size)]
    units = [(r, c) for r in range(size) for c in range(size)]
    for d in range(size):
        for i in range(size):
            for groups in (
                [(i, c) for c in range(size)],
                [(r, i) for r in range(size)],
                [(b * (i // b) + k // b, b * (i % b) + k % b) for k in range(size)],
            ):
                cls += [
                    [-var(*groups[p], d), -var(*groups[q], d)]
                    for p in range(size)
                    for q in range(p + 1, size)
                ]
    for j in rng.permutation(len(units))[:givens]:
        r, c = units[j]
        cls.append([var(r, c, int(sol[r, c]))])
    cnf = CNF.from_clauses(cls, num_vars=size**3)
    return Instance(cnf, f"sudoku({size},{givens})#{seed}", np.zeros(cnf.num_vars))


def cellular_automaton(rule: int, width: int, steps: int, *, seed: int) -> Instance:
    """Neuro#'s `cell(R, n, r)`: the states of a rule-R elementary cellular automaton on a ring of
    `width` cells over `steps` steps whose last state equals that of a random run (`steps`
    steps forward from a random start), i.e. count the `steps`-step predecessor histories.

    Variables: `x[t, i]` = variable `t * width + i + 1`, `t = 0..steps`; `time_step = t / steps`.

    Example:
        >>> cellular_automaton(9, 8, 4, seed=0).cnf.num_vars
        40
    """
    if not 0 <= rule < 256:
        raise ValueError(f"rule must be in 0..255, got {rule}")
    if width < 3 or steps < 1:
        raise ValueError(f"need width >= 3 and steps >= 1, got {width}, {steps}")
    rng = _signed_rng(seed)
    table = [(rule >> p) & 1 for p in range(8)]
    state = rng.integers(0, 2, width)
    for _ in range(steps):
        idx = 4 * np.roll(state, 1) + 2 * state + np.roll(state, -1)
        state = np.array(table)[idx]
    var = lambda t, i: t * width + (i % width) + 1  # noqa: E731
    cls = []
    for t in range(steps):
        for i in range(width):
            for p in range(8):
                bits = ((p >> 2) & 1, (p >> 1) & 1, p & 1)
                pre = [var(t, i + o) * (-1 if bit else 1) for o, bit in zip((-1, 0, 1), bits)]
                cls.append(pre + [var(t + 1, i) * (1 if table[p] else -1)])
    cls += [[var(steps, i) * (1 if state[i] else -1)] for i in range(width)]
    n = width * (steps + 1)
    ts = np.repeat(np.arange(steps + 1) / steps, width)
    return Instance(CNF.from_clauses(cls, num_vars=n), f"cell({rule},{width},{steps})#{seed}", ts)


def sample_filtered(
    make: Callable[[int], Instance],
    count_fn: Callable[[CNF], object],
    num: int,
    *,
    seed: int,
    min_decisions: int = 1,
    max_decisions: int = 100_000,
    max_tries: int = 1000,
) -> list[Instance]:
    """Rejection sampling as in Neuro#'s filter: keep satisfiable instances whose VSADS run takes
    between `min_decisions` and `max_decisions` decisions.

    Args:
        make: seed -> instance.
        count_fn: the counter (e.g. `respax.sat.count`), called with `max_decisions`.
        num: how many to keep.
        seed: the first seed tried (then seed + 1, ...).

    Example:
        >>> from respax.sat import count
        >>> insts = sample_filtered(lambda s: random_kcnf(3, 20, 60, seed=s), count, 2, seed=0)
        >>> len(insts)
        2
    """
    out: list[Instance] = []
    for s in range(seed, seed + max_tries):
        inst = make(s)
        info = count_fn(inst.cnf, max_decisions=max_decisions)
        if info.status != "ok" or not info.count or info.decisions < min_decisions:
            continue
        out.append(inst)
        if len(out) == num:
            return out
    raise ValueError(f"only {len(out)} of {num} instances passed the filter in {max_tries} tries")


def canonical_tseitin(clauses, names: dict[int, str]):
    """Renumber a Tseitin CNF so that it no longer depends on the converter's traversal order
    (py-aiger's follows Python's per-process string hashing): variables are ordered by colour
    refinement (Weisfeiler-Lehman) of the clause graph, started from the `names` of the input
    and output variables, and the clauses are sorted. Variables left with equal colours are
    symmetric in every respect the refinement sees; they keep their relative order.

    Returns the new clauses and the old -> new variable map.

    Example:
        >>> canonical_tseitin([[-3, 1], [3, -1]], {1: "x"})[0]
        [[-2, 1], [-1, 2]]
    """
    import hashlib

    variables = sorted({abs(v) for c in clauses for v in c} | set(names))
    colour = {v: names.get(v, "") for v in variables}
    occurs: dict[int, list[int]] = {v: [] for v in variables}
    for i, c in enumerate(clauses):
        for u in c:
            occurs[abs(u)].append(i)
    distinct = len(set(colour.values()))
    for _ in range(len(variables)):
        new = {}
        for v in variables:
            sig = sorted(
                repr(sorted(((u > 0) == (w > 0), u == w, colour[abs(u)]) for u in clauses[i]))
                for i in occurs[v]
                for w in clauses[i]
                if abs(w) == v
            )
            new[v] = hashlib.sha1((colour[v] + "|" + "|".join(sig)).encode()).hexdigest()
        colour = new
        if len(set(colour.values())) == distinct:
            break
        distinct = len(set(colour.values()))
    rank = {v: i for i, v in enumerate(variables)}
    order = sorted(variables, key=lambda v: (colour[v], rank[v]))
    remap = {v: i + 1 for i, v in enumerate(order)}
    out = sorted(sorted((remap[abs(u)] if u > 0 else -remap[abs(u)]) for u in c) for c in clauses)
    return out, remap
