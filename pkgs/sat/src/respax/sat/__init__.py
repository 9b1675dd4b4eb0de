"""respax.sat: DIMACS I/O and an exact #SAT counter with learned branching (Neuro#)."""

from importlib.metadata import version as _version

from ._cnf import (
    CNF as CNF,
    brute_force_count as brute_force_count,
    format_dimacs as format_dimacs,
    parse_dimacs as parse_dimacs,
    read_dimacs as read_dimacs,
    write_dimacs as write_dimacs,
)
from ._counter import (
    STATUSES as STATUSES,
    BranchingPolicy as BranchingPolicy,
    ComponentView as ComponentView,
    CountInfo as CountInfo,
    count as count,
)
from ._td import primal_graph as primal_graph, td_bias as td_bias

__version__ = _version("respax-sat")
