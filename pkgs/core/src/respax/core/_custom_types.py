"""Typing aliases shared by every respax package."""

from collections.abc import Callable
from typing import Any, TypeAlias

import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

Params: TypeAlias = PyTree[Any]
"""A parameter pytree (an Equinox module, a dict of arrays, ...)."""

Vector: TypeAlias = PyTree[Float[Array, "..."]]
"""A vector in parameter space: a pytree with the structure of the parameters."""

Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = float | int | Float[ArrayLike, ""]
IntScalar: TypeAlias = Int[Array, ""]
BoolScalar: TypeAlias = Bool[Array, ""]

Matvec: TypeAlias = Callable[[Any], Any]
"""A linear map over pytrees: `v -> A v`."""

Operator: TypeAlias = lx.AbstractLinearOperator | Matvec
"""Anything the solvers accept: a lineax operator, or a plain matvec function over pytrees."""
