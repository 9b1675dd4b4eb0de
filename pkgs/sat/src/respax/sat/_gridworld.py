"""Neuro#'s grid-world family: count the action sequences of length T on a Perlin-noise world
that never step on lava ("avoid lava", past-time LTL `H ~lava`).

The dynamics follow py-aiger-gridworld's `gridworld(n, compressed_inputs=True)`: the position is
one-hot (`x`, `y`, n bits each), a 2-bit action moves left / up / right / down, a move off the
grid leaves the position unchanged. The monitor is one latch, `ok' = ok & ~lava(x', y')`, so it
reads the position after each move (the start itself is not checked, as in the authors'
sampler); the formula asserts `ok` after the last step. One step is an and-inverter graph built
with py-aiger-bv and turned into CNF by py-aiger-cnf's Tseitin transformation; the step's
clauses are then copied T times with the state inputs of step t renamed to the state outputs of
step t - 1, so every variable carries the step that created it (Neuro#'s grid "time" feature).

Differences from the authors' sampler (`grid_sampler.py`), stated because they change the
formulas: the world comes from our own Perlin gradient noise (the `noise` package's simplex
noise needs a C compiler), with the sampler's parameters (scale 100, 6 octaves, persistence 5,
lacunarity 2), scaled to the simplex range [-1, 1], and its lava threshold (< -0.27); only the
lava sensor is built (the other colours feed nothing in "avoid lava" and only add determined
gate variables).

py-aiger, py-aiger-bv and py-aiger-cnf are the `respax-sat[families]` extra.
"""

import numpy as np

from ._cnf import CNF
from ._families import Instance, _signed_rng, canonical_tseitin

LAVA_BELOW = -0.27  # the authors' threshold on the noise value for "red" (lava) cells


def _fade(t):
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(
    shape: tuple[int, int],
    *,
    seed: int,
    scale: float = 100.0,
    octaves: int = 6,
    persistence: float = 5.0,
    lacunarity: float = 2.0,
) -> np.ndarray:
    """Fractal 2-D Perlin gradient noise at the integer points of `shape`, sampled at
    `(i / scale, j / scale)`; octave k has frequency `lacunarity**k` and weight
    `persistence**k`, and the sum is divided by the total weight (as the `noise` package does).

    Example:
        >>> perlin_noise((4, 4), seed=0).shape
        (4, 4)
    """
    if octaves < 1 or scale <= 0:
        raise ValueError(f"need octaves >= 1 and scale > 0, got {octaves}, {scale}")
    rng = _signed_rng(seed)
    perm = np.tile(rng.permutation(256), 2)
    angles = rng.uniform(0, 2 * np.pi, 256)
    grads = np.stack([np.cos(angles), np.sin(angles)], -1)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    total = np.zeros(shape)
    weight = 0.0
    for k in range(octaves):
        f = lacunarity**k / scale
        px, py = i * f + 0.5 / 256, j * f + 0.5 / 256  # off the lattice, where noise is 0
        x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
        fx, fy = px - x0, py - y0

        def corner(dx, dy, x0=x0, y0=y0, fx=fx, fy=fy):
            g = grads[perm[perm[(x0 + dx) % 256] + (y0 + dy) % 256]]
            return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

        u, v = _fade(fx), _fade(fy)
        top = corner(0, 0) + u * (corner(1, 0) - corner(0, 0))
        bottom = corner(0, 1) + u * (corner(1, 1) - corner(0, 1))
        total += persistence**k * (top + v * (bottom - top))
        weight += persistence**k
    # 2-D Perlin noise lies in [-sqrt(2)/2, sqrt(2)/2]; scaled to [-1, 1], the range of the
    # `noise` package's simplex noise that the authors' thresholds were set on.
    return np.sqrt(2.0) * total / weight


def grid_world_layout(size: int, *, seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The world of `grid_world(size, T, seed=seed)`: a boolean lava map (rows = y, columns = x)
    and the start position (x, y), 0-based, drawn uniformly.

    Example:
        >>> lava, start = grid_world_layout(10, seed=0)
        >>> lava.shape
        (10, 10)
    """
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    lava = perlin_noise((size, size), seed=seed) < LAVA_BELOW
    rng = np.random.default_rng([int(seed), 1])
    return lava, (int(rng.integers(size)), int(rng.integers(size)))


def _step_circuit(lava: np.ndarray):
    """One step as a py-aiger-bv circuit: inputs x, y (one-hot), ok, a (2 bits); outputs
    x2, y2, ok2."""
    try:
        import aiger_bv as BV
    except ImportError as e:  # pragma: no cover - the extra is in the dev environment
        raise ImportError(
            "grid_world needs the families extra: pip install 'respax-sat[families]'"
        ) from e
    n = lava.shape[0]
    x, y = BV.uatom(n, "x"), BV.uatom(n, "y")
    ok, a = BV.uatom(1, "ok"), BV.uatom(2, "a")
    # py-aiger-gridworld's compressed actions: 00 left, 01 up, 10 right, 11 down.
    horizontal, forward = ~a[0], a[1] ^ a[0]

    def move(z, active):
        z2 = BV.ite(forward, z << 1, z >> 1)
        stay = (z2 == 0) | ~active
        return BV.ite(stay, z, z2)

    x2, y2 = move(x, horizontal), move(y, ~horizontal)
    hit = BV.uatom(1, 0)
    for r in np.flatnonzero(lava.any(axis=1)):
        cols = np.flatnonzero(lava[r])
        row_hit = y2[int(r)]
        in_cols = x2[int(cols[0])]
        for c in cols[1:]:
            in_cols = in_cols | x2[int(c)]
        hit = hit | (row_hit & in_cols)
    ok2 = ok & ~hit
    return x2.with_output("x2").aigbv | y2.with_output("y2").aigbv | ok2.with_output("ok2").aigbv


def grid_world(size: int, horizon: int, *, seed: int) -> Instance:
    """Neuro#'s `grid(size, horizon)`: the action sequences of `horizon` steps from the start of
    `grid_world_layout(size, seed=seed)` whose positions after every move avoid lava.

    The count is over all variables, but every gate variable is determined by the actions, so it
    equals the number of such sequences (out of 4**horizon). `time_step` = the step that created a
    variable divided by `horizon`.

    Example:
        >>> inst = grid_world(4, 3, seed=0)
        >>> inst.name
        'grid(4,3)#0'
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    import aiger_cnf

    lava, (sx, sy) = grid_world_layout(size, seed=seed)
    step = aiger_cnf.aig2cnf(_step_circuit(lava).aig, force_true=False)
    names = {abs(lit): name for name, lit in [*step.input2lit.items(), *step.output2lit.items()]}
    step_clauses, remap = canonical_tseitin(step.clauses, names)

    def moved(lit):
        return remap[abs(lit)] if lit > 0 else -remap[abs(lit)]

    input2lit = {name: moved(lit) for name, lit in step.input2lit.items()}
    output2lit = {name: moved(lit) for name, lit in step.output2lit.items()}
    state = {f"x[{i}]": f"x2[{i}]" for i in range(size)}
    state |= {f"y[{i}]": f"y2[{i}]" for i in range(size)}
    state["ok[0]"] = "ok2[0]"
    inputs = {abs(lit): (name, lit > 0) for name, lit in input2lit.items()}
    local_vars = sorted({abs(v) for c in step_clauses for v in c} | set(inputs))
    # Global variable 1 is constant true; the initial state is literals of it.
    clauses: list[list[int]] = [[1]]
    init = {f"x[{i}]": i == sx for i in range(size)} | {f"y[{i}]": i == sy for i in range(size)}
    init["ok[0]"] = True
    prev = {name: (1 if val else -1) for name, val in init.items()}
    times = [0]
    for t in range(horizon):
        local = {}
        for v in local_vars:
            if v in inputs and inputs[v][0] in state:
                name, positive = inputs[v]
                local[v] = prev[name] if positive else -prev[name]
            else:
                times.append(t)
                local[v] = len(times)
        clauses += [[local[abs(u)] if u > 0 else -local[abs(u)] for u in c] for c in step_clauses]
        prev = {}
        for name, out in state.items():
            lit = output2lit[out]
            prev[name] = local[abs(lit)] if lit > 0 else -local[abs(lit)]
    clauses.append([prev["ok[0]"]])
    cnf = CNF.from_clauses(clauses, num_vars=len(times))
    return Instance(cnf, f"grid({size},{horizon})#{seed}", np.asarray(times) / horizon)


def grid_world_trajectories(size: int, horizon: int, *, seed: int) -> int:
    """The count of `grid_world(size, horizon, seed=seed)` computed on the world itself, an
    oracle independent of the circuit and the CNF: dynamic programming over positions, the number
    of lava-free action sequences that end in each cell after t steps (exact Python ints).

    Example:
        >>> grid_world_trajectories(4, 3, seed=0) <= 4**3
        True
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    lava, (sx, sy) = grid_world_layout(size, seed=seed)
    ways = np.zeros((size, size), dtype=object)  # [y, x]
    ways[sy, sx] = 1
    for _ in range(horizon):
        nxt = np.zeros_like(ways)
        for dx, dy in ((-1, 0), (0, 1), (1, 0), (0, -1)):  # left, up, right, down
            for y, x in zip(*np.nonzero(ways)):
                x2 = min(max(x + dx, 0), size - 1)  # a move off the grid stays put
                y2 = min(max(y + dy, 0), size - 1)
                if not lava[y2, x2]:
                    nxt[y2, x2] += ways[y, x]
        ways = nxt
    return int(ways.sum())
