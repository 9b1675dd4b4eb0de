"""CNF formulas: an immutable array form, DIMACS read/write."""

import os
import pathlib
import warnings
from collections.abc import Iterable, Sequence

import equinox as eqx
import numpy as np
from jaxtyping import Int


class CNF(eqx.Module):
    """An immutable CNF formula in flat array form (DIMACS literal convention).

    Clauses are stored back to back in `literals` (signed 1-based variable ids, as in DIMACS);
    clause `i` is `literals[offsets[i]:offsets[i + 1]]`. Variables `1..num_vars` all count,
    also those that occur in no clause (each doubles the model count).

    Attributes:
        num_vars: the number of variables (the `p cnf` header's first number).
        literals: all clauses' literals, concatenated (int32).
        offsets: clause boundaries, length `num_clauses + 1` (int64).

    Example:
        >>> f = CNF.from_clauses([[1, -2], [2, 3]], num_vars=3)
        >>> f.num_clauses, f.clauses()
        (2, [(1, -2), (2, 3)])
    """

    num_vars: int = eqx.field(static=True)
    literals: Int[np.ndarray, " nnz"]
    offsets: Int[np.ndarray, " m1"]

    def __init__(self, num_vars: int, literals, offsets):
        if isinstance(num_vars, bool) or not isinstance(num_vars, int | np.integer):
            raise TypeError(f"num_vars must be an int, got {type(num_vars).__name__}")
        if num_vars < 0:
            raise ValueError(f"num_vars must be >= 0, got {num_vars}")
        literals = np.asarray(literals, dtype=np.int32).reshape(-1)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != literals.size:
            raise ValueError("offsets must start at 0 and end at len(literals)")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must be non-decreasing")
        if literals.size and (np.any(literals == 0) or np.abs(literals).max() > num_vars):
            bad = literals[(literals == 0) | (np.abs(literals) > num_vars)][0]
            raise ValueError(f"literal {int(bad)} is not in 1..{num_vars} or its negation")
        literals.setflags(write=False)
        offsets.setflags(write=False)
        self.num_vars = int(num_vars)
        self.literals = literals
        self.offsets = offsets

    @classmethod
    def from_clauses(cls, clauses: Iterable[Sequence[int]], num_vars: int | None = None) -> "CNF":
        """Build from a list of clauses of signed 1-based ints.

        Args:
            clauses: e.g. `[[1, -2], [2, 3]]`.
            num_vars: defaults to the largest variable that occurs.

        Returns:
            The formula.
        """
        lits: list[int] = []
        offs = [0]
        for i, c in enumerate(clauses):
            for x in c:
                if isinstance(x, bool) or not isinstance(x, int | np.integer) or x == 0:
                    raise ValueError(f"clause {i}: literals must be nonzero ints, got {x!r}")
                lits.append(int(x))
            offs.append(len(lits))
        if num_vars is None:
            num_vars = max((abs(x) for x in lits), default=0)
        return cls(num_vars, np.array(lits, np.int32), np.array(offs, np.int64))

    @property
    def num_clauses(self) -> int:
        """The number of clauses."""
        return int(self.offsets.size - 1)

    def clauses(self) -> list[tuple[int, ...]]:
        """The clauses as tuples of signed ints."""
        o, lit = self.offsets, self.literals
        return [tuple(int(x) for x in lit[o[i] : o[i + 1]]) for i in range(self.num_clauses)]


def parse_dimacs(text: str) -> CNF:
    """Parse DIMACS CNF text.

    `c` lines are comments; projection (`c p show`, `c ind`) and weight (`c p weight`) lines are
    ignored with a warning (this counter is unweighted and unprojected). Clauses may span lines
    and end with `0`. A `%` line (old SATLIB end marker) ends the input.

    Args:
        text: the file's contents.

    Returns:
        The formula, with `num_vars` from the header.

    Raises:
        ValueError: a missing or malformed header, a literal beyond the header's variables,
            a token that is not an integer, a clause count different from the header's, or an
            unterminated last clause; the message names the line.

    Example:
        >>> parse_dimacs("p cnf 2 1\\n1 -2 0\\n").clauses()
        [(1, -2)]
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    num_vars = num_clauses = None
    header_line = 0
    lits: list[int] = []
    offs = [0]
    pending = False
    last_line = 0
    ignored: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("c"):
            tok = line.split()
            if len(tok) >= 3 and tok[1] == "p" and tok[2] in ("show", "weight"):
                ignored.append(f"line {lineno}: c p {tok[2]}")
            elif len(tok) >= 2 and tok[1] == "ind":
                ignored.append(f"line {lineno}: c ind")
            continue
        if line.startswith("%"):
            break
        if line.startswith("p"):
            tok = line.split()
            if num_vars is not None:
                raise ValueError(f"line {lineno}: second 'p' header (first on line {header_line})")
            if len(tok) != 4 or tok[1] != "cnf":
                raise ValueError(f"line {lineno}: header must be 'p cnf <vars> <clauses>': {raw!r}")
            try:
                num_vars, num_clauses = int(tok[2]), int(tok[3])
            except ValueError:
                raise ValueError(
                    f"line {lineno}: header counts must be integers: {raw!r}"
                ) from None
            if num_vars < 0 or num_clauses < 0:
                raise ValueError(f"line {lineno}: header counts must be >= 0: {raw!r}")
            header_line = lineno
            continue
        if num_vars is None:
            raise ValueError(f"line {lineno}: clause before the 'p cnf' header")
        for tok in line.split():
            try:
                x = int(tok)
            except ValueError:
                raise ValueError(f"line {lineno}: {tok!r} is not an integer literal") from None
            if x == 0:
                offs.append(len(lits))
                pending = False
            else:
                if abs(x) > num_vars:
                    raise ValueError(
                        f"line {lineno}: literal {x} is beyond the header's {num_vars} variables"
                    )
                lits.append(x)
                pending = True
            last_line = lineno
    if num_vars is None:
        raise ValueError("no 'p cnf <vars> <clauses>' header found")
    if pending:
        raise ValueError(f"line {last_line}: the last clause is not terminated by 0")
    if len(offs) - 1 != num_clauses:
        raise ValueError(
            f"line {header_line}: the header says {num_clauses} clauses, found {len(offs) - 1}"
        )
    if ignored:
        warnings.warn(
            "ignored projection/weight lines (counting all variables, unweighted): "
            + ", ".join(ignored[:3])
            + (" ..." if len(ignored) > 3 else ""),
            stacklevel=2,
        )
    return CNF(num_vars, np.array(lits, np.int32), np.array(offs, np.int64))


def read_dimacs(path: str | os.PathLike) -> CNF:
    """Read a DIMACS CNF file (see `parse_dimacs`).

    Example:
        >>> f = read_dimacs("formula.cnf")  # doctest: +SKIP
    """
    return parse_dimacs(pathlib.Path(path).read_text())


def format_dimacs(cnf: CNF, comments: Sequence[str] = ()) -> str:
    """DIMACS text of `cnf` (one clause per line).

    Example:
        >>> print(format_dimacs(CNF.from_clauses([[1, -2]])), end="")
        p cnf 2 1
        1 -2 0
    """
    if not isinstance(cnf, CNF):
        raise TypeError(f"cnf must be a CNF, got {type(cnf).__name__}")
    out = [f"c {c}" for c in comments]
    out.append(f"p cnf {cnf.num_vars} {cnf.num_clauses}")
    out += [" ".join([*map(str, c), "0"]) for c in cnf.clauses()]
    return "\n".join(out) + "\n"


def write_dimacs(cnf: CNF, path: str | os.PathLike, comments: Sequence[str] = ()) -> None:
    """Write `cnf` as a DIMACS file.

    Example:
        >>> write_dimacs(CNF.from_clauses([[1, -2]]), "f.cnf")  # doctest: +SKIP
    """
    pathlib.Path(path).write_text(format_dimacs(cnf, comments))


def brute_force_count(cnf: CNF) -> int:
    """Exact model count by enumerating all assignments (oracle for tests; `num_vars` <= 22).

    Example:
        >>> brute_force_count(CNF.from_clauses([[1, 2]]))
        3
    """
    n = cnf.num_vars
    if n > 22:
        raise ValueError(f"brute_force_count enumerates 2**num_vars assignments; got {n} > 22")
    assign = (np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)) & 1  # (2^n, n)
    ok = np.ones(2**n, bool)
    for c in cnf.clauses():
        sat = np.zeros(2**n, bool)
        for x in c:
            col = assign[:, abs(x) - 1]
            sat |= (col == 1) if x > 0 else (col == 0)
        ok &= sat
    return int(ok.sum())
