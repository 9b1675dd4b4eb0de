"""Neuro#'s bv_expr family: count the assignments of signed bit-vector words that satisfy a
random comparison of two random word expressions.

The generator follows the authors' `word_sampler.py`: an expression of `size` nodes is a
comparison (==, !=, <, <=, >, >=) whose two sides split the remaining nodes; a side of one node
is a leaf (a fresh variable word while any are left, with probability 1/2, else a constant: 1
with probability 4/5, else uniform), of two nodes a unary operation (~, abs, negation) of one
node, of more an arithmetic (+, -; probability 2/3) or bitwise (&, |, ^) operation of two sides.
Arithmetic wraps modulo 2**width and comparisons are signed. The tree is built once as data
(`BVNode`), then as a py-aiger-bv circuit, whose and-inverter graph py-aiger-cnf turns into CNF
with the output asserted (the authors call the external `aigtocnf` binary instead); the same
tree evaluates on integers for the brute-force oracle (`bv_expr_count`). Counts are over the
variables that occur in the expression.
"""

import dataclasses
import operator

import numpy as np

from ._cnf import CNF
from ._families import Instance, _signed_rng, canonical_tseitin

_UNARY = ("~", "abs", "neg")
_ARITH = ("+", "-")
_BITWISE = ("&", "|", "^")
_CMP = ("==", "!=", "<", "<=", ">", ">=")
# one table for the circuit (py-aiger-bv words) and the oracle (numpy integer arrays)
_OPS = {
    "~": operator.invert,
    "abs": abs,
    "neg": operator.neg,
    "+": operator.add,
    "-": operator.sub,
    "&": operator.and_,
    "|": operator.or_,
    "^": operator.xor,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclasses.dataclass(frozen=True)
class BVNode:
    """One node of a bv_expr tree: `op` is "var" (`value` = index), "const" (`value`), a unary,
    binary or comparison operator with its `args`."""

    op: str
    args: tuple["BVNode", ...] = ()
    value: int = 0

    def __str__(self) -> str:
        if self.op == "var":
            return f"x{self.value}"
        if self.op == "const":
            return str(self.value)
        if len(self.args) == 1:
            return f"{self.op}({self.args[0]})"
        return f"({self.args[0]} {self.op} {self.args[1]})"


def random_bv_tree(size: int, num_vars: int, width: int, *, seed: int) -> BVNode:
    """The random comparison tree of `bv_expr(size, num_vars, width, seed=seed)`.

    Example:
        >>> random_bv_tree(5, 4, 8, seed=0).op in _CMP
        True
    """
    if size < 3:
        raise ValueError(f"size must be >= 3 (a comparison of two sides), got {size}")
    if num_vars < 1 or width < 2:
        raise ValueError(f"need num_vars >= 1 and width >= 2, got {num_vars}, {width}")
    rng = _signed_rng(seed)
    free = list(range(num_vars))

    def leaf():
        if free and rng.integers(2) == 0:
            return BVNode("var", value=free.pop())
        if rng.integers(5) == 0:
            return BVNode("const", value=int(rng.integers(-(2 ** (width - 1)), 2 ** (width - 1))))
        return BVNode("const", value=1)

    def expr(n):
        if n <= 1:
            return leaf()
        if n == 2:
            return BVNode(_UNARY[rng.integers(3)], (expr(1),))
        ops = _BITWISE if rng.integers(3) == 0 else _ARITH
        op = ops[rng.integers(len(ops))]
        split = int(rng.integers(1, n - 1))
        return BVNode(op, (expr(split), expr(n - split - 1)))

    op = _CMP[rng.integers(len(_CMP))]
    split = int(rng.integers(1, size - 1))
    return BVNode(op, (expr(split), expr(size - split - 1)))


def _variables(node: BVNode) -> list[int]:
    if node.op == "var":
        return [node.value]
    return sorted({v for a in node.args for v in _variables(a)})


def _circuit(node: BVNode, width: int):
    import aiger_bv as BV

    def build(n):
        if n.op == "var":
            return BV.atom(width, f"x{n.value}", signed=True)
        if n.op == "const":
            return BV.atom(width, n.value, signed=True)
        return _OPS[n.op](*(build(c) for c in n.args))

    return build(node)


def bv_expr(size: int = 5, num_vars: int = 4, width: int = 8, *, seed: int) -> Instance:
    """Neuro#'s `bv_expr(size, num_vars, width)`: the satisfying assignments of a random signed
    bit-vector comparison (see the module docstring); `time_step` is 0.

    Example:
        >>> inst = bv_expr(5, 4, 4, seed=1)
        >>> inst.name
        'bv_expr(5,4,4)#1'
    """
    try:
        import aiger_cnf
    except ImportError as e:  # pragma: no cover - the extra is in the dev environment
        raise ImportError(
            "bv_expr needs the families extra: pip install 'respax-sat[families]'"
        ) from e
    tree = random_bv_tree(size, num_vars, width, seed=seed)
    circ = _circuit(tree, width)
    cnf = aiger_cnf.aig2cnf(circ.aig)  # asserts the single output
    names = {abs(lit): name for name, lit in [*cnf.input2lit.items(), *cnf.output2lit.items()]}
    clauses, remap = canonical_tseitin(cnf.clauses, names)
    # inputs that the Tseitin clauses never mention (a word folded away) stay free variables
    n = len(remap)
    name = f"bv_expr({size},{num_vars},{width})#{seed}"
    return Instance(CNF.from_clauses(clauses, num_vars=n), name, np.zeros(n))


def bv_expr_count(size: int = 5, num_vars: int = 4, width: int = 8, *, seed: int) -> int:
    """The count of `bv_expr(size, num_vars, width, seed=seed)` by evaluating its tree on every
    assignment of the words that occur in it (an oracle independent of the circuit; 2**(width *
    words) evaluations, so small widths only)."""
    tree = random_bv_tree(size, num_vars, width, seed=seed)
    words = _variables(tree)
    if width * len(words) > 24:
        raise ValueError(f"{width * len(words)} free bits: too many to enumerate (max 24)")
    mod, half = 1 << width, 1 << (width - 1)
    grid = np.arange(1 << (width * len(words)), dtype=np.int64)
    value = {v: (grid >> (width * i)) % mod for i, v in enumerate(words)}

    def signed(x):
        x = x % mod
        return np.where(x >= half, x - mod, x)

    def ev(n):
        if n.op == "var":
            return signed(value[n.value])
        if n.op == "const":
            return np.full(grid.shape, signed(np.int64(n.value)))
        out = _OPS[n.op](*(ev(c) for c in n.args))
        return out if n.op in _CMP else signed(out)

    return int(ev(tree).sum())
